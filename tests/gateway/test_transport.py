"""The lean transport (wce.gateway.transport) behaves as hypercorn's own trio server does.

Every behavioural test runs twice, `lean` and `stock`, against a real server in this process (trio,
a free port on 127.0.0.1) serving the small ASGI app below, through a raw-socket HTTP/1.1 client,
so that connection reuse, closes and pipelining are visible. Where the two differ on purpose (two
places, see wce/gateway/transport.py) the test states each server's behaviour. `test_wce_serve` runs
`wce serve` end to end under both (WCE_STOCK_TRANSPORT=1 for hypercorn's own). Time bounds are
generous (a slow, busy 2-core machine must pass) and every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import wsproto
import wsproto.events
from hypercorn.config import Config
from hypercorn.trio import serve as stock_serve

from support import start_server
from wce.gateway.transport import HYPERCORN_PIN, ConnectionSet, check_hypercorn
from wce.gateway.transport import serve as lean_serve

BOUND = 30.0  # seconds: the upper bound on any single wait (they take milliseconds when all is well)
BIG = os.urandom(4 << 20)  # 4 MiB: any loss or reordering shows
LIMIT = 64 << 10  # the test app's request body limit
TRANSPORTS = ["lean", "stock"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class App:
    """The ASGI app under test; records what happened to it.

    /sleep/<ms>          answer after a pause
    /big/<size>/<chunk>  BIG[:size] with content-length, sent `chunk` bytes per message, no pause
    /many/<n>/<size>     n small messages; `ticks` counts how often other tasks ran meanwhile
    /held                chunked: "first", then waits for `release`, then five chunks
    /upload (POST)       the body's size, or 413 + connection: close once it passes LIMIT
    a websocket          echoes text messages
    anything else        "ok <path>"
    """

    def __init__(self) -> None:
        self.release = trio.Event()
        self.finished: list[str] = []  # paths whose handler has returned (or was cancelled)
        self.disconnects = 0
        self.ticks = 0  # bumped by a ticker task in the /many test
        self.ticks_during_many: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        if scope["type"] == "websocket":  # echo
            await receive()
            await send({"type": "websocket.accept"})
            while (msg := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": msg["text"]})
            return
        path: str = scope["path"]
        part = path.strip("/").split("/")
        try:
            if part[0] == "sleep":
                await trio.sleep(int(part[1]) / 1000)
                await text(send, f"ok {path}")
            elif part[0] == "big":
                size, chunk = int(part[1]), int(part[2])
                await start(send, 200, size)
                for i in range(0, size, chunk):
                    await send({"type": "http.response.body", "body": BIG[i:i + chunk], "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            elif part[0] == "many":
                n, size = int(part[1]), int(part[2])
                await start(send, 200, n * size)
                ticks = self.ticks
                for _ in range(n):
                    await send({"type": "http.response.body", "body": b"x" * size, "more_body": True})
                self.ticks_during_many = self.ticks - ticks
                await send({"type": "http.response.body", "body": b""})
            elif part[0] == "held":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
                await self.release.wait()
                for i in range(5):
                    await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            elif part[0] == "upload":
                await self.upload(receive, send)
            else:
                await text(send, f"ok {path}")
        finally:
            self.finished.append(path)

    async def upload(self, receive: Receive, send: Send) -> None:
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                self.disconnects += 1
                return
            size += len(msg.get("body", b""))
            if size > LIMIT:
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-length", b"0"), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": b""})
                return
            if not msg.get("more_body", False):
                break
        await text(send, str(size))


async def start(send: Send, status: int, length: int) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(length).encode())]})


async def text(send: Send, body: str) -> None:
    await start(send, 200, len(body))
    await send({"type": "http.response.body", "body": body.encode()})


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode()


def post(path: str, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {n}\r\n\r\n".encode() + body


class Client:
    """One HTTP/1.1 connection, spoken by hand."""

    def __init__(self, stream: trio.SocketStream, read_size: int, pause: float) -> None:
        self.stream = stream
        self.read_size = read_size
        self.pause = pause  # seconds between two reads: a slow reader
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None, read_size: int = 65536,
                      pause: float = 0) -> Client:
        sock = trio.socket.socket()
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            with trio.fail_after(BOUND):
                await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock), read_size, pause)

    async def send(self, data: bytes) -> None:
        with trio.fail_after(BOUND):
            await self.stream.send_all(data)

    async def request(self, data: bytes) -> Response:
        await self.send(data)
        return await self.response()

    async def response(self) -> Response:
        with trio.fail_after(BOUND):
            lines = (await self.until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            if "content-length" in headers:
                body = await self.exactly(int(headers["content-length"]))
            else:
                assert headers.get("transfer-encoding") == "chunked", headers
                parts = []
                while size := int((await self.until(b"\r\n")).split(b";")[0], 16):
                    parts.append(await self.exactly(size))
                    await self.exactly(2)
                await self.until(b"\r\n")
                body = b"".join(parts)
        return Response(int(lines[0].split()[1]), headers, body)

    async def until(self, sep: bytes) -> bytes:
        """Everything before sep (which is consumed)."""
        while (i := self.buf.find(sep)) < 0:
            await self._more()
        out = bytes(self.buf[:i])
        del self.buf[:i + len(sep)]
        return out

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def _more(self) -> None:
        if self.pause:
            await trio.sleep(self.pause)
        data = await self.stream.receive_some(self.read_size)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    async def wait_closed(self) -> bytes:
        """Read until the server closes the connection (EOF or reset); what arrived meanwhile."""
        with trio.fail_after(BOUND):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    out = bytes(self.buf)
                    self.buf.clear()
                    return out
                self.buf += data

    def abort(self) -> None:
        """Vanish: close with a reset (SO_LINGER 0), as a crashed client or a dropped NAT entry does."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.socket.close()

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Server:
    port: int
    app: App
    connections: ConnectionSet | None  # lean only
    stop: trio.Event  # set it to shut the server down gracefully
    stopped: trio.Event  # set when serve() has returned
    clients: list[Client] = field(default_factory=list)

    async def connect(self, **kwargs: Any) -> Client:
        client = await Client.connect(self.port, **kwargs)
        self.clients.append(client)
        return client


@asynccontextmanager
async def running(transport: str, **settings: Any) -> AsyncIterator[Server]:
    """A server on a free port; stopped gracefully (and all clients closed) on exit."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("test_transport")
    config.keep_alive_timeout = 60
    config.graceful_timeout = BOUND
    for k, v in settings.items():
        setattr(config, k, v)
    app = App()
    connections = ConnectionSet() if transport == "lean" else None
    stop, stopped = trio.Event(), trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            if connections is not None:
                await lean_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status,
                                 connections=connections)
            else:
                await stock_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve)
        server = Server(int(binds[0].rsplit(":", 1)[1]), app, connections, stop, stopped)
        try:
            yield server
        finally:
            app.release.set()
            stop.set()
            for client in server.clients:
                await client.aclose()


async def wait_for(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(BOUND):
        while not predicate():
            await trio.sleep(0.01)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """What the server logged at ERROR or above (an app or server crash)."""
    caplog.set_level(logging.INFO, logger="test_transport")
    return lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- keep-alive -------------------------------------------------------------------------------------

async def test_keep_alive_reuses_the_connection(transport: str) -> None:
    async with running(transport) as server:
        client = await server.connect()
        for i in range(5):
            r = await client.request(get(f"/n{i}"))
            assert (r.status, r.body) == (200, f"ok /n{i}".encode())
            assert "connection" not in r.headers
        if server.connections is not None:
            assert server.connections.statistics().connections == 1


async def test_idle_connection_closed_after_keep_alive_timeout(transport: str) -> None:
    async with running(transport, keep_alive_timeout=2) as server:
        used = await server.connect()
        assert (await used.request(get("/"))).status == 200
        never_used = await server.connect()  # idle from the start: same timer
        t0 = trio.current_time()
        assert await used.wait_closed() == b""
        assert await never_used.wait_closed() == b""
        assert 1.0 <= trio.current_time() - t0 < BOUND


async def test_keep_alive_timeout_does_not_cut_a_request_in_flight(transport: str) -> None:
    async with running(transport, keep_alive_timeout=1) as server:
        client = await server.connect()
        r = await client.request(get("/sleep/2500"))
        assert (r.status, r.body) == (200, b"ok /sleep/2500")
        assert (await client.request(get("/again"))).body == b"ok /again"


# -- read timeout -----------------------------------------------------------------------------------

async def test_read_timeout_closes_a_connection_stalled_in_a_request_body(transport: str) -> None:
    async with running(transport, read_timeout=1) as server:
        client = await server.connect()
        await client.send(post("/upload", b"0123456789", length=100))  # the body never ends
        t0 = trio.current_time()
        assert await client.wait_closed() == b""
        assert 0.5 <= trio.current_time() - t0 < BOUND
        await wait_for(lambda: server.app.disconnects == 1)  # the app heard about it


async def test_read_timeout_on_an_idle_connection(transport: str) -> None:
    # One of the two deliberate differences (wce/gateway/transport.py). hypercorn's read loop stops
    # at read_timeout, but its idle task keeps the connection open until keep_alive_timeout; the
    # lean transport closes at read_timeout.
    keep_alive = 20 if transport == "lean" else 3
    async with running(transport, read_timeout=1, keep_alive_timeout=keep_alive) as server:
        client = await server.connect()
        await client.send(b"GET / HTTP/1.1\r\nhost: test\r\n")  # a head that never ends
        t0 = trio.current_time()
        assert await client.wait_closed() == b""
        elapsed = trio.current_time() - t0
        if transport == "lean":
            assert 0.5 <= elapsed < keep_alive
        else:
            assert elapsed >= keep_alive - 1


# -- pipelining -------------------------------------------------------------------------------------

async def test_pipelined_requests_are_answered_in_order(transport: str) -> None:
    async with running(transport) as server:
        client = await server.connect()
        await client.send(get("/sleep/200") + get("/a") + post("/upload", b"x" * 1000) + get("/b"))
        assert (await client.response()).body == b"ok /sleep/200"
        assert (await client.response()).body == b"ok /a"
        assert (await client.response()).body == b"1000"
        assert (await client.response()).body == b"ok /b"
        assert (await client.request(get("/c"))).body == b"ok /c"


# -- backpressure and vanishing clients -------------------------------------------------------------

@pytest.mark.parametrize("chunk", [len(BIG), 64 << 10], ids=["one-4MiB-write", "64KiB-writes"])
async def test_slow_reader_gets_the_whole_body_then_reuses_the_connection(transport: str, chunk: int) -> None:
    async with running(transport) as server:
        client = await server.connect(rcvbuf=16 << 10, read_size=16 << 10, pause=0.001)
        r = await client.request(get(f"/big/{len(BIG)}/{chunk}"))
        assert r.status == 200 and r.body == BIG
        client.pause = 0
        assert (await client.request(get("/after"))).body == b"ok /after"
        if server.connections is not None:  # the kernel did push back, and the rest waited for it
            assert server.connections.statistics().partial_writes > 0


@pytest.mark.parametrize("chunk", [len(BIG), 64 << 10], ids=["one-4MiB-write", "64KiB-writes"])
@pytest.mark.parametrize("how", ["reset", "close"])
async def test_client_vanishing_mid_response_leaves_the_server_serving(
        transport: str, chunk: int, how: str, errors: Callable[[], list[str]]) -> None:
    async with running(transport) as server:
        client = await server.connect(rcvbuf=16 << 10, read_size=16 << 10)
        path = f"/big/{len(BIG)}/{chunk}"
        await client.send(get(path))
        await client.exactly(64 << 10)  # the head and some of the body
        if how == "reset":
            client.abort()
        else:
            await client.aclose()
        await wait_for(lambda: path in server.app.finished)
        other = await server.connect()
        assert (await other.request(get("/next"))).body == b"ok /next"
        if server.connections is not None:
            await wait_for(lambda: server.connections.statistics().connections == 1)  # type: ignore[union-attr]
    assert errors() == []


async def test_a_sender_that_never_blocks_still_lets_other_tasks_run(transport: str) -> None:
    # 2,000 small writes all fit in the kernel's buffer, so none of them has to wait
    async with running(transport) as server, trio.open_nursery() as nursery:
        async def tick() -> None:
            while True:
                server.app.ticks += 1
                await trio.sleep(0)

        nursery.start_soon(tick)
        client = await server.connect()
        r = await client.request(get("/many/2000/100"))
        assert len(r.body) == 200_000
        await wait_for(lambda: "/many/2000/100" in server.app.finished)
        assert server.app.ticks_during_many is not None and server.app.ticks_during_many >= 10
        nursery.cancel_scope.cancel()


async def test_http2_with_prior_knowledge_works_too(transport: str) -> None:
    # hypercorn also speaks h2c on a plain socket (h2 is then on top of this transport)
    async with running(transport) as server, httpx.AsyncClient(
            http1=False, http2=True, base_url=f"http://127.0.0.1:{server.port}", timeout=BOUND) as client:
        paths = [f"/sleep/{ms}" for ms in (300, 200, 100, 0)]
        got: dict[str, bytes] = {}

        async def fetch(path: str) -> None:
            r = await client.get(path)
            assert r.http_version == "HTTP/2"
            got[path] = r.content

        async with trio.open_nursery() as nursery:  # concurrent streams on one connection
            for path in paths:
                nursery.start_soon(fetch, path)
        assert got == {p: f"ok {p}".encode() for p in paths}
        assert (await client.get(f"/big/{len(BIG)}/{64 << 10}")).content == BIG
        if server.connections is not None:
            assert server.connections.statistics().connections == 1


async def test_websocket_is_not_idle_while_open(transport: str) -> None:
    async with running(transport, keep_alive_timeout=1) as server:
        client = await server.connect()
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

        async def next_event() -> wsproto.events.Event:
            with trio.fail_after(BOUND):
                while True:
                    for event in ws.events():
                        return event
                    ws.receive_data(await client.stream.receive_some(65536) or None)

        await client.send(ws.send(wsproto.events.Request(host="test", target="/ws")))
        assert isinstance(await next_event(), wsproto.events.AcceptConnection)
        for text in ["one", "two"]:
            await client.send(ws.send(wsproto.events.TextMessage(text)))
            event = await next_event()
            assert isinstance(event, wsproto.events.TextMessage) and event.data == text
            await trio.sleep(1.5)  # past keep_alive_timeout: an open websocket is not idle
        await client.send(ws.send(wsproto.events.CloseConnection(1000)))
        assert isinstance(await next_event(), wsproto.events.CloseConnection)


# -- request size limits ----------------------------------------------------------------------------

async def test_request_head_over_the_limit_gets_431_and_a_close(transport: str) -> None:
    async with running(transport, h11_max_incomplete_size=4096) as server:
        client = await server.connect()
        await client.send(b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 8000)
        assert (await client.response()).status == 431
        assert await client.wait_closed() == b""


async def test_request_body_over_the_limit_gets_413_and_a_close(transport: str) -> None:
    async with running(transport) as server:
        client = await server.connect()
        await client.send(post("/upload", b"x" * (LIMIT + (16 << 10)), length=1 << 20))
        r = await client.response()
        assert r.status == 413 and r.headers["connection"] == "close"
        assert await client.wait_closed() == b""
        ok = await server.connect()
        assert (await ok.request(post("/upload", b"x" * 100))).body == b"100"


# -- shutdown ---------------------------------------------------------------------------------------

async def test_shutdown_closes_200_idle_connections_at_once_and_lets_a_stream_finish(transport: str) -> None:
    async with running(transport) as server:
        idle = []
        for i in range(200):
            client = await server.connect()
            assert (await client.request(get(f"/{i}"))).status == 200
            idle.append(client)
        busy = await server.connect()
        await busy.send(get("/held"))
        await busy.until(b"first\n")
        if server.connections is not None:
            stats = server.connections.statistics()
            assert (stats.connections, stats.idle) == (201, 200)

        server.stop.set()
        t0 = trio.current_time()
        for client in idle:
            assert await client.wait_closed() == b""
        assert trio.current_time() - t0 < 10  # "at once": milliseconds, with room for a slow machine
        assert "/held" not in server.app.finished and not server.stopped.is_set()

        server.app.release.set()
        rest = await busy.wait_closed()  # the stream ends, then the connection closes (no keep-alive)
        assert all(f"chunk {i}\n".encode() in rest for i in range(5)) and rest.endswith(b"\r\n0\r\n\r\n")
        with trio.fail_after(BOUND):
            await server.stopped.wait()


async def test_shutdown_cuts_a_response_that_outlasts_graceful_timeout(transport: str) -> None:
    async with running(transport, graceful_timeout=0.5) as server:
        busy = await server.connect()
        await busy.send(get("/held"))
        await busy.until(b"first\n")
        server.stop.set()
        with trio.fail_after(BOUND):
            await server.stopped.wait()
        assert not (await busy.wait_closed()).endswith(b"0\r\n\r\n")
        assert "/held" in server.app.finished  # cancelled


async def test_a_client_that_stops_reading_cannot_hold_shutdown_past_graceful_timeout(transport: str) -> None:
    # The other deliberate difference. hypercorn shields its writes from cancellation, so when the
    # grace period ends, a write blocked on a client that stopped reading stays blocked and serve()
    # waits for that client forever. The lean transport closes the sockets left at that point.
    async with running(transport, graceful_timeout=0.5) as server:
        client = await server.connect(rcvbuf=16 << 10)
        await client.send(get(f"/big/{len(BIG)}/{len(BIG)}"))
        await client.exactly(1)  # the response has begun; the client never reads again
        server.stop.set()
        if transport == "stock":
            with trio.move_on_after(3):
                await server.stopped.wait()
            assert not server.stopped.is_set()
            await client.aclose()  # only the client going away ends it
        with trio.fail_after(BOUND):
            await server.stopped.wait()


async def test_tls_is_left_to_hypercorns_own_server(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[Config] = []

    async def stock(app: Any, config: Config, **kwargs: Any) -> None:
        called.append(config)

    monkeypatch.setattr("hypercorn.trio.serve", stock)
    config = Config()
    config.certfile, config.keyfile = "cert.pem", "key.pem"
    await lean_serve(App(), config)
    assert called == [config]


# -- the pin ----------------------------------------------------------------------------------------

def test_hypercorn_is_the_pinned_version() -> None:
    assert version("hypercorn") == HYPERCORN_PIN
    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"hypercorn=={HYPERCORN_PIN}" in deps


def test_another_hypercorn_is_refused_loudly() -> None:
    check_hypercorn(HYPERCORN_PIN)
    with pytest.raises(RuntimeError, match=r"hypercorn 0\.18\.0.*hypercorn 0\.19\.0 is installed"):
        check_hypercorn("0.19.0")


# -- `wce serve` end to end -------------------------------------------------------------------------

@pytest.mark.parametrize("stock", ["", "1"], ids=["lean", "stock"])
async def test_wce_serve(tmp_path: Path, stock: str) -> None:
    srv = start_server(tmp_path, env={"WCE_STOCK_TRANSPORT": stock})
    try:
        port = int(srv.url.rsplit(":", 1)[1])
        client = await Client.connect(port)
        for _ in range(3):  # keep-alive
            assert (await client.request(get("/healthz"))).status == 200
        await client.send(get("/healthz") + get("/healthz"))  # pipelined
        assert [(await client.response()).status for _ in range(2)] == [200, 200]

        big = await Client.connect(port)
        await big.send(post("/new", b"{" * (64 << 10), length=2 << 20))
        r = await big.response()
        assert r.status == 413 and r.headers["connection"] == "close"
        assert await big.wait_closed() == b""

        idle = [client] + [await Client.connect(port) for _ in range(49)]
        for c in idle[1:]:
            assert (await c.request(get("/healthz"))).status == 200
        srv.proc.send_signal(15)
        for c in idle:
            assert await c.wait_closed() == b""
        for c in [big, *idle]:
            await c.aclose()
        assert await trio.to_thread.run_sync(srv.proc.wait, BOUND) == 0  # (a second SIGTERM could kill it)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
        srv.stop(BOUND)  # (reaps it and closes its output pipe)
