"""`GET /{cenv}/api/events` through the real gateway: who may listen, what they hear, and that a
stream ends cleanly however it ends (client gone, server stopping) without leaking its slot."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from support import Cenv, Server, add_user, admin_cenv, assert_safe_error, bearer, processes_mentioning, start_server

MAX_STREAMS = 3


@pytest.fixture(scope="module")
def events_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose workers send heartbeats every 0.2 s and allow 3 streams per cenv."""
    srv = start_server(tmp_path_factory.mktemp("events"),
                       env={"WCE_EVENT_HEARTBEAT": "0.2", "WCE_EVENT_STREAMS": str(MAX_STREAMS)})
    yield srv
    srv.stop()
    assert processes_mentioning(str(srv.data)) == []


@pytest.fixture
async def client(events_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=events_server.url, timeout=30) as c:
        yield c


class Listener:
    """An event stream read over a raw HTTP/1.1 connection, so that hanging up is just closing the
    socket (httpx leaves its inner async generators to the garbage collector when a stream is
    left early, which trio reports as errors)."""

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.buf = b""
        self.body = b""
        self.ended = False

    async def _fill(self) -> None:
        data = await self.sock.receive_some(65536)
        if not data:
            raise EOFError("connection closed in the middle of the stream")
        self.buf += data

    async def head_any(self) -> tuple[int, dict[str, str]]:
        """The status and headers, whatever the answer."""
        while b"\r\n\r\n" not in self.buf:
            await self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *fields = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        return int(status_line.split()[1]), headers

    async def head(self) -> tuple[int, dict[str, str]]:
        """The head of a streamed answer."""
        status, headers = await self.head_any()
        assert headers.get("transfer-encoding") == "chunked", headers
        return status, headers

    async def line(self) -> str | None:
        """The next line of the body, or None once the stream has ended cleanly (last chunk)."""
        with trio.fail_after(5):
            while b"\n" not in self.body:
                if self.ended:
                    return None
                while b"\r\n" not in self.buf:
                    await self._fill()
                size_line, rest = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    await self._fill()
                    rest = self.buf.split(b"\r\n", 1)[1]
                self.body += rest[:size]
                self.buf = rest[size + 2:]
                self.ended = size == 0
        line, self.body = self.body.split(b"\n", 1)
        return line.decode()

    async def event(self) -> dict[str, Any]:
        """The next event (comments and blank lines skipped)."""
        while True:
            line = await self.line()
            assert line is not None, "the stream ended"
            if line.startswith("data: "):
                return json.loads(line[6:])  # type: ignore[no-any-return]

    async def quiet(self, seconds: float) -> list[str]:
        """The data lines received in the next few seconds (heartbeats keep lines coming)."""
        got = []
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            line = await self.line()
            assert line is not None
            if line.startswith("data: "):
                got.append(line)
        return got


@asynccontextmanager
async def listen(server: Server, c: Cenv, tables: str, token: str | None) -> AsyncIterator[Listener]:
    """An open event stream. A 503 (the stream cap) is waited out for up to 10 s: a stream that
    just closed gives its slot back once the worker hears of it, a moment after the socket closes."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {c.url(f'/api/events?tables={tables}')} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()
    deadline = trio.current_time() + 10
    while True:
        sock = await trio.open_tcp_stream(host, int(port))
        await sock.send_all(request)
        listener = Listener(sock)
        status, headers = await listener.head_any()
        if status != 503 or trio.current_time() > deadline:
            break
        await sock.aclose()
        await trio.sleep(0.05)
    async with sock:
        if status == 200:
            assert headers.get("transfer-encoding") == "chunked", headers
        assert status == 200 and headers["content-type"] == "text/event-stream; charset=utf-8", (status, headers)
        assert await listener.line() == ": connected"  # subscribed from here on
        yield listener


async def docs_cenv(client: httpx.AsyncClient) -> tuple[Cenv, str, str]:
    """docs(id, owner, body): users may select only their own rows; anon nothing; a second table `other`."""
    c = await admin_cenv(client)
    h = bearer(c.admin)
    for ddl in ("CREATE TABLE docs (id INTEGER PRIMARY KEY, owner INTEGER, body TEXT)", "CREATE TABLE other (x)"):
        assert (await client.post(c.url("/api/tables"), headers=h, json={"sql": ddl})).status_code == 201
    r = await client.put(c.url("/api/permissions/docs"), headers=h, json={"roles": {"user": {"select": True}}})
    assert r.status_code == 200
    r = await client.put(c.url("/api/policies/docs"), headers=h,
                         json=[{"role": "user", "action": "select", "using": "owner = :user_id"}])
    assert r.status_code == 200, r.text
    alice = await add_user(client, c, "alice")
    return c, alice, await add_user(client, c, "bob")


async def user_id(client: httpx.AsyncClient, c: Cenv, token: str) -> int:
    return int((await client.get(c.url("/auth/me"), headers=bearer(token))).json()["id"])


async def test_a_listener_hears_rows_it_may_see_and_not_others(client: httpx.AsyncClient, events_server: Server) -> None:
    c, alice, bob = await docs_cenv(client)
    h = bearer(c.admin)
    aid, bid = await user_id(client, c, alice), await user_id(client, c, bob)
    async with listen(events_server, c, "docs", alice) as heard, listen(events_server, c, "docs", c.admin) as admin:
        await client.post(c.url("/api/tables/docs/rows"), headers=h, json={"id": 1, "owner": bid, "body": "bob's"})
        await client.post(c.url("/api/tables/docs/rows"), headers=h, json={"id": 2, "owner": aid, "body": "alice's"})
        await client.patch(c.url("/api/tables/docs/rows/1"), headers=h, json={"body": "bob's, edited"})
        await client.delete(c.url("/api/tables/docs/rows/2"), headers=h)
        assert await heard.event() == {"table": "docs", "op": "insert", "rowid": 2}
        assert await heard.event() == {"table": "docs", "op": "delete", "rowid": 2}
        assert await heard.quiet(0.5) == []  # nothing about bob's row
        assert [await admin.event() for _ in range(4)] == [
            {"table": "docs", "op": "insert", "rowid": 1}, {"table": "docs", "op": "insert", "rowid": 2},
            {"table": "docs", "op": "update", "rowid": 1}, {"table": "docs", "op": "delete", "rowid": 2}]


async def test_who_may_listen(client: httpx.AsyncClient) -> None:
    c, alice, _ = await docs_cenv(client)
    other = await admin_cenv(client)
    assert_safe_error(await client.get(c.url("/api/events?tables=docs")), 401, "unauthenticated")  # anon: no grant
    assert_safe_error(await client.get(c.url("/api/events?tables=other"), headers=bearer(alice)), 403, "forbidden")
    assert_safe_error(await client.get(c.url("/api/events?tables=docs,other"), headers=bearer(alice)), 403)
    assert_safe_error(await client.get(c.url("/api/events?tables=docs"), headers=bearer(other.admin)), 401)
    assert_safe_error(await client.get(c.url("/api/events?tables=nope"), headers=bearer(c.admin)), 404, "not_found")
    assert_safe_error(await client.get(c.url("/api/events?tables=_wce_users"), headers=bearer(c.admin)), 404)
    assert_safe_error(await client.get(c.url("/api/events"), headers=bearer(c.admin)), 400, "bad_request")
    assert_safe_error(await client.post(c.url("/api/events?tables=docs"), headers=bearer(c.admin)), 405)


async def test_heartbeats_and_clean_close_free_the_slot(client: httpx.AsyncClient, events_server: Server) -> None:
    c, alice, _ = await docs_cenv(client)
    async with listen(events_server, c, "docs", alice) as heard:
        t0 = time.monotonic()
        lines = [await heard.line() for _ in range(4)]
        assert lines.count(": heartbeat") == 2 and time.monotonic() - t0 < 3
    # clients that went away give their slot back: many more streams than the cap, one after the other
    # (a slot is freed when the worker hears of the disconnect, a moment after the socket closes)
    # (`listen` waits out a 503 for a bounded time: so a slot that is never given back fails it)
    for _ in range(MAX_STREAMS * 2):
        async with listen(events_server, c, "docs", alice):
            pass
    # and the cap holds for streams open together
    async with listen(events_server, c, "docs", alice), listen(events_server, c, "docs", alice), listen(events_server, c, "docs", alice):
        assert_safe_error(await client.get(c.url("/api/events?tables=docs"), headers=bearer(alice)), 503, "unavailable")
    async with listen(events_server, c, "docs", alice):
        pass


async def test_streams_end_cleanly_when_the_worker_dies_or_the_server_stops(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        c, alice, _ = await docs_cenv(client)
        async with listen(srv, c, "docs", alice) as heard:
            [pid] = srv.wait_workers(1)
            os.kill(pid, signal.SIGKILL)
            while (line := await heard.line()) is not None:  # the gateway ends the response properly
                assert not line.startswith("data:")
        async with listen(srv, c, "docs", alice) as heard:  # served by a new worker
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            while (line := await heard.line()) is not None:  # up to the last chunk: a clean end
                assert not line.startswith("data:")
            assert time.monotonic() - t0 < 3
    assert srv.stop(10) == 0
    assert processes_mentioning(str(srv.data)) == []
