"""A lean trio transport under hypercorn's protocol layer; `wce serve` runs on it.

Why it exists
-------------
hypercorn's trio server (`hypercorn/trio/tcp_server.py`, 0.18.0) spends ~500 µs of CPU per request
on a trivial ASGI app; the same h11 protocol code under hypercorn's uvloop worker spends ~185 µs
(measured with py-spy, 2026-11). The protocol code is not the cost. Two pieces of trio
glue in `TCPServer` are (16 scheduler steps and 2 spawned tasks per request):

* the keep-alive timer: on every request `TrioSingleTask.restart`/`stop` takes a `trio.Lock`,
  cancels the idle task and starts a new one with `nursery.start()` (~150 µs/request);
* the send path: every write, including h11's empty end-of-message, takes a `trio.Lock`, a
  shielded `CancelScope` and `SocketStream.send_all` (~125 µs/request).

`LeanTCPServer` keeps everything above the socket (`ProtocolWrapper` and so h11/h2, `HTTPStream`,
the per-request app task, lifespan, `Config`) and replaces only that glue:

* no idle task: each receive runs in its own `CancelScope`; while the connection is idle its
  deadline is the keep-alive deadline, moved in place when the protocol sends `Updated(idle=...)`.
  One task per worker (`ConnectionSet.close_idle_at_shutdown`) waits for `context.terminated` and
  ends the reads of idle connections, as hypercorn's idle tasks do at shutdown;
* eager writes: with no write in progress, `os.write` on the socket. What the kernel does not take
  is written under the lock, shielded, as the socket takes it, so a slow reader pushes back exactly
  as before; a client that takes no byte for `send_timeout` seconds is dropped (its socket closed:
  the app's sends end, it sees `http.disconnect`). Empty writes are skipped. After 64 KiB of eager writes (each counted as its size + 1 KiB) the
  writer yields once, so a task streaming to a fast reader cannot starve the others.

Semantics kept, each checked against both servers in tests/gateway/test_transport.py: keep-alive
reuse and `keep_alive_timeout` (only while idle); `read_timeout` on every receive; pipelined requests
answered in order; backpressure; the request head limit (`h11_max_incomplete_size`); a client
vanishing mid-response; h2c; at shutdown idle connections close at once, in-flight responses finish
(then the connection closes) until `graceful_timeout`. TLS (and so HTTP/2 by ALPN, and QUIC) is a
front proxy's job: with `certfile`/`keyfile` set, `serve` hands everything to hypercorn's own server.

Two deliberate differences, both where hypercorn 0.18.0 does not do what its setting says (the
tests pin both behaviours):

* `read_timeout` on an idle connection: hypercorn's read loop stops, but its idle task keeps the
  socket open until `keep_alive_timeout`; here the connection closes at `read_timeout`. (WCE leaves
  `read_timeout` unset.)
* `graceful_timeout`: hypercorn's writes are shielded from cancellation, so a write blocked on a
  client that stopped reading outlives the grace period and shutdown waits for that client forever;
  here the sockets still open when the grace period ends are closed.

Left out on purpose (the Date header is cached by `wce.gateway.serve.GatewayConfig`, a Config
subclass, not here): writing the response head together with the first
body chunk (hypercorn writes the head on `http.response.start`; holding it back would delay the
headers of streaming responses, for ~3 µs); an eager `recv` (~11 µs, noise level).

What it relies on in hypercorn 0.18.0 (hence the pin, checked below at import):

* `hypercorn.trio.tcp_server.TCPServer` and `MAX_RECV`: the constructor arguments, the attributes
  `app`, `config`, `context`, `state`, `stream`, `send_lock`, `protocol`, `_task_group`, `_close()`,
  and `protocol_send` for `Closed` events and for writes queued behind a write in progress;
* the protocol sends `Updated(idle=False)` when a request starts and `Updated(idle=True)` when the
  connection may take the next one (`protocol/h11.py` `_handle_events`/`_maybe_recycle`, `h2.py`),
  and `context.terminated` is set at shutdown before in-flight responses are awaited;
* `_worker_serve` below is `hypercorn.trio.run.worker_serve` minus TLS/QUIC, built from the same
  pieces (`Lifespan`, `WorkerContext`, `StatsdLogger`, `wrap_app`, `raise_shutdown`, ...). hypercorn
  names its `TCPServer` there as a module global with no parameter to swap it; copying ~50 lines is
  cleaner than patching that global for the whole process.

From trio it uses public API only (`SocketStream.socket.fileno()`, `trio.lowlevel` checkpoints).

When to drop it: when hypercorn's trio `TCPServer` no longer starts a task per request for the
keep-alive timer (one timer per connection whose deadline moves) and writes without the lock and
shielded scope when no write is in progress, skipping empty writes; an upstream PR carrying this
class's two changes would do it, ideally with the two fixes above. Then `wce/gateway/serve.py` goes
back to `hypercorn.trio.serve`, and the tests here say whether anything we rely on changed. If only
`worker_serve` gains a parameter for the server class, `_worker_serve` can go and the class stays.
Meanwhile `WCE_STOCK_TRANSPORT=1` runs `wce serve` on hypercorn's own server for comparison
(bench/transport_bench.py measures both).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from math import inf
from random import randint
from typing import Literal

import hypercorn.trio
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, Framework, LifespanState
from hypercorn.utils import ShutdownError, parse_socket_addr, raise_shutdown, repr_socket_addr, wrap_app

HYPERCORN_PIN = "0.18.0"
"""The hypercorn release whose internals this module was written and tested against."""

_YIELD_AFTER = 64 * 1024
"""Eager-write budget between two yields to the scheduler (each write counts its size + 1 KiB)."""


def check_hypercorn(found: str) -> None:
    """Refuse any hypercorn but the pinned one: this module depends on its private structure."""
    if found != HYPERCORN_PIN:
        raise RuntimeError(
            f"wce.gateway.transport is built on hypercorn {HYPERCORN_PIN}'s trio TCPServer and "
            f"worker_serve, but hypercorn {found} is installed. Either install hypercorn=={HYPERCORN_PIN}, "
            f"or compare hypercorn/trio/{{run,tcp_server}}.py with {HYPERCORN_PIN}, run "
            f"tests/gateway/test_transport.py, and only then move HYPERCORN_PIN and pyproject.toml."
        )


check_hypercorn(version("hypercorn"))


@dataclass(frozen=True)
class TransportStatistics:
    """A snapshot of one worker's connections."""

    connections: int  # open connections
    idle: int  # of which waiting for their next request
    partial_writes: int  # writes the kernel did not take at once, finished under backpressure (total)
    send_timeouts: int  # connections dropped because their client took nothing for send_timeout (total)


class ConnectionSet:
    """One worker's live connections: shutdown closes the idle ones at once and, when the grace
    period is over, aborts what is left."""

    def __init__(self, send_timeout: float = inf) -> None:
        self._live: set[LeanTCPServer] = set()
        self._changed: trio.Event | None = None  # set on every departure once shutdown has begun
        self.send_timeout = send_timeout  # seconds a client may take no byte of a pending write
        self.partial_writes = 0
        self.send_timeouts = 0

    def add(self, connection: LeanTCPServer) -> None:
        self._live.add(connection)

    def discard(self, connection: LeanTCPServer) -> None:
        self._live.discard(connection)
        if self._changed is not None:
            self._changed.set()

    async def close_idle_at_shutdown(self, context: WorkerContext) -> None:
        """Wait for the worker's shutdown, end every idle connection's read, then wait for the busy
        ones to finish. If this task is cancelled first (the grace period is over: the server
        nursery is cancelled), close the sockets of the rest: a write blocked on a client that does
        not read is shielded from that cancellation, and would hold the shutdown forever."""
        await context.terminated.wait()
        for connection in list(self._live):
            connection.close_if_idle()
        try:
            while self._live:
                self._changed = trio.Event()
                await self._changed.wait()
        finally:
            for connection in list(self._live):
                connection.abort()

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(len(self._live), sum(c.idle for c in self._live), self.partial_writes,
                                   self.send_timeouts)


class LeanTCPServer(TCPServer):
    """One plain TCP or Unix socket connection: hypercorn's `TCPServer` without the idle task per
    request and with eager writes. Not for TLS streams (`serve` never passes one)."""

    def __init__(self, app: AppWrapper, config: Config, context: WorkerContext, state: ConnectionState,
                 connections: ConnectionSet, stream: trio.SocketStream) -> None:
        if not isinstance(stream, trio.SocketStream):
            raise TypeError("LeanTCPServer serves plain sockets; TLS goes through hypercorn's own server")
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]  # (its idle_task stays unused)
        self.stream: trio.SocketStream = stream  # type: ignore[assignment]
        self._connections = connections
        self._fileno = stream.socket.fileno  # -1 once the socket is closed, so never a reused fd
        self.idle = True  # between requests: the keep-alive deadline applies
        self._idle_deadline = inf
        self._receive_deadline = inf  # read_timeout for the receive in progress
        self._read_scope: trio.CancelScope | None = None  # set while a receive is in progress
        self._unyielded = 0

    async def run(self) -> None:
        socket = self.stream.socket
        self._connections.add(self)
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    self.app, self.config, self.context, task_group, ConnectionState(self.state),
                    False, client, server, self.protocol_send, "http/1.1",
                )
                await self.protocol.initiate()
                self._became_idle()
                await self._read_data()
        except OSError:
            pass  # the client left before we could ask its address
        finally:
            self._connections.discard(self)
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._write(event.data)
        elif isinstance(event, Updated):
            if event.idle:
                self._became_idle()
            else:
                self.idle = False
                self._move_deadline()
        else:  # Closed
            await super().protocol_send(event)

    def close_if_idle(self) -> None:
        """At shutdown (`context.terminated` set): end an idle connection's read now. A busy one
        gets no new deadline; the protocol closes it after its response."""
        self._move_deadline()

    def abort(self) -> None:
        """Close the socket now: blocked reads and writes on it fail, and the protocol sees Closed."""
        self.stream.socket.close()

    async def _read_data(self) -> None:
        read_timeout = self.config.read_timeout or inf
        receive_some = self.stream.receive_some
        while True:
            self._receive_deadline = inf if read_timeout == inf else trio.current_time() + read_timeout
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._read_scope = scope
                try:
                    data = await receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                finally:
                    self._read_scope = None
            if scope.cancelled_caught:
                break  # keep-alive or read timeout, or an idle connection at shutdown
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    def _deadline(self) -> float:
        if not self.idle:
            return self._receive_deadline
        if self.context.terminated.is_set():
            return -inf
        return min(self._receive_deadline, self._idle_deadline)

    def _became_idle(self) -> None:
        self.idle = True
        self._idle_deadline = trio.current_time() + self.config.keep_alive_timeout
        self._move_deadline()

    def _move_deadline(self) -> None:
        if self._read_scope is not None:
            self._read_scope.deadline = self._deadline()

    async def _write(self, data: bytes) -> None:
        if not data:
            return  # h11's end of a content-length body
        lock = self.send_lock
        if lock.locked():  # another task is mid-write: queue behind it, hypercorn's own way
            await super().protocol_send(RawData(data))
            return
        lock.acquire_nowait()  # no checkpoint between here and the write: nobody can interleave
        try:
            try:
                sent = os.write(self._fileno(), data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self._connections.partial_writes += 1
                self._unyielded = 0
                if not await self._write_rest(memoryview(data)[sent:]):
                    self._connections.send_timeouts += 1
                    self.abort()
                    await self.protocol.handle(Closed())
                return
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
            await trio.lowlevel.checkpoint()  # a sender ignoring the closed connection must not spin
            return
        finally:
            lock.release()
        self._unyielded += len(data) + 1024
        if self._unyielded > _YIELD_AFTER:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_rest(self, view: memoryview) -> bool:
        """Write what the kernel did not take at once, as the socket takes it. Shielded (a write cut
        short by a cancellation would tear the response), but only while the client takes bytes:
        False once it took none for `send_timeout` seconds."""
        timeout = self._connections.send_timeout
        fileno = self._fileno
        with trio.CancelScope(shield=True):
            while view:
                with trio.move_on_after(timeout) as waiting:
                    if fileno() < 0:
                        raise trio.ClosedResourceError
                    await trio.lowlevel.wait_writable(fileno())
                if waiting.cancelled_caught:
                    return False
                try:
                    view = view[os.write(fileno(), view):]
                except BlockingIOError:
                    pass
        return True


async def serve(
    app: Framework,
    config: Config,
    *,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    mode: Literal["asgi", "wsgi"] | None = None,
    connections: ConnectionSet | None = None,
    send_timeout: float = inf,
) -> None:
    """`hypercorn.trio.serve` on the lean transport: same arguments, same `task_status` value (the
    bound URLs), same shutdown. `connections` is for tests and statistics; `send_timeout` (seconds
    a client may take no byte of a pending write) is its when it is not given. With TLS configured this
    is hypercorn's own server. Like hypercorn's `serve`, process settings (workers, reload) are
    ignored."""
    if config.ssl_enabled:
        await hypercorn.trio.serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status, mode=mode)
        return
    await _worker_serve(wrap_app(app, config.wsgi_max_body_size, mode), config, connections or ConnectionSet(send_timeout),
                        shutdown_trigger, task_status)


async def _worker_serve(
    app: AppWrapper,
    config: Config,
    connections: ConnectionSet,
    shutdown_trigger: Callable[..., Awaitable[None]] | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    # hypercorn 0.18.0 hypercorn/trio/run.py worker_serve, without TLS and QUIC listeners; the two
    # changes are marked "lean".
    config.set_statsd_logger_class(StatsdLogger)

    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"http://{bind}")
                await config.log.info(f"Running on http://{bind} (CTRL + C to quit)")
            server_nursery.start_soon(connections.close_idle_at_shutdown, context)  # lean

            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)

                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(LeanTCPServer, app, config, context,  # lean
                                    ConnectionState(lifespan_state.copy()), connections),
                            listeners,
                            handler_nursery=server_nursery,
                        ),
                    )

                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
