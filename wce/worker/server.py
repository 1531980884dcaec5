"""The worker's event loop: accept gateway connections, answer requests, go away when idle or told.

Lifecycle: serving -> closing (idle timeout, Shutdown message or SIGTERM) -> exit once every
gateway connection has closed (or a drain deadline passes). Closing is announced to each gateway
with a Closing message: requests already sent are still answered, so a gateway never loses one
to a race with the idle timer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import apsw
import trio

from wce import proto
from wce.proto.channel import MessageChannel
from wce.config import ServerConfig
from wce.core import db
from wce.core.ids import path_for

from . import app, crash_marker, limits, sandbox
from .pages_routes import not_modified_headers, page_headers
from .http import StreamReply
from .tenant import Tenant

HELLO_TIMEOUT = 10.0
PUSH_MAX = 1 << 20  # public pages up to this size are pushed to gateways, which serve them directly
PUSH_SHARE = 4  # a cenv pushes at most this fraction (1/4) of a gateway's page budget
PAGE_OVERHEAD = 1024  # a pushed page's headers and objects, roughly, besides its body
NOTICE_BYTES = 1 << 20  # pages per Notice: a reset of any size goes in pieces far under the frame limit
INLINE_MAX = 256 << 10  # answers up to this size go in one Response; larger ones in pieces
PIECE = 128 << 10  # the pieces of a larger answer
MAX_ANSWER = proto.MAX_FRAME  # a larger answer is refused (500): the limit one frame used to set
DRAIN_TIMEOUT = 30.0


class Window:
    """How far a streamed answer may run ahead of what its gateway has passed on to the client
    (proto.Credit): at most proto.STREAM_WINDOW bytes, or one piece when nothing is outstanding."""

    __slots__ = ("open", "_event")

    def __init__(self) -> None:
        self.open = proto.STREAM_WINDOW
        self._event = trio.Event()

    def grant(self, size: int) -> None:
        """The gateway passed `size` more bytes on."""
        self.open += size
        self._event.set()

    async def wait_open(self, size: int) -> None:
        """Return once `size` more bytes may go (and count them as gone)."""
        while size > self.open and self.open < proto.STREAM_WINDOW:
            self._event = trio.Event()
            await self._event.wait()
        self.open -= size


class Worker:
    """The running state of one worker process."""

    def __init__(self, tenant: Tenant, config: ServerConfig) -> None:
        self.tenant = tenant
        self.config = config
        self.channels: set[MessageChannel] = set()
        self.inflight = 0
        self.last_active = trio.current_time()
        self.closing: str | None = None
        self.closing_event = trio.Event()
        self.done = trio.Event()
        self.streams: set[trio.CancelScope] = set()  # one per streamed answer being sent
        tenant.notify = self.broadcast
        self._pushed: dict[str, str] = {}  # public page path -> etag, as every gateway has them
        self._pushed_version = -1
        self.push_budget = (config.page_cache_mb << 20) // PUSH_SHARE  # bytes of pages this cenv pushes
        self.windows: dict[tuple[MessageChannel, int], Window] = {}  # streamed answers' flow control
        self.socket_name: tuple[Path, int] | None = None  # (path, inode) the fork server bound for us
        self.closing_fd: int | None = None  # where we tell the fork server we are closing

    def _public_pages(self) -> dict[str, Any]:
        """The public pages gateways should answer: rendered, each up to PUSH_MAX, and together
        within this cenv's share of a gateway's page budget (taken in page order, so a new page
        does not push out older ones). The others are answered by this worker."""
        rc = self.tenant.render_cache
        out = {}
        room = self.push_budget
        for page in list(rc.pages.values()):
            if page.access == "public":
                e = rc.current(page)  # a stale page is pushed once a request has rendered it
                if e is not None and e.access == "public" and len(e.body) <= PUSH_MAX:
                    size = len(e.body) + PAGE_OVERHEAD
                    if size <= room:
                        out[page.path] = e
                        room -= size
        return out

    def _pages_notices(self, entries: dict[str, Any], dropped: list[str], reset: bool = False) -> list[proto.Notice]:
        """The pages Notices (proto.PagePush) for these changes, each with at most NOTICE_BYTES of
        pages (one frame must never exceed the limit: finding L3); only the first resets, and
        carries the dropped paths."""
        notices: list[proto.Notice] = []
        gone = tuple(dropped)
        pages: list[proto.PushedPage] = []
        size = 0
        for path, e in entries.items():
            if (gone or pages) and size + len(e.body) > NOTICE_BYTES:
                notices.append(proto.PagePush(reset and not notices, gone, tuple(pages)).notice())
                gone, pages, size = (), [], 0
            pages.append(proto.PushedPage(path, e.etag, e.body, page_headers(e, "public"),
                                          not_modified_headers(e, "public")))
            size += len(e.body) + PAGE_OVERHEAD
        if gone or pages or not notices:
            notices.append(proto.PagePush(reset and not notices, gone, tuple(pages)).notice())
        return notices

    async def push_pages(self) -> None:
        """After any commit, send gateways the public pages that changed (and those that went), before
        the answer that caused them: a gateway serving a cached page never answers older than a write
        it has acknowledged. Compared against what was pushed, so renames and withdrawals are caught."""
        version = self.tenant.bus.published
        if version == self._pushed_version:
            return
        self._pushed_version = version
        current = self._public_pages()
        changed = {p: e for p, e in current.items() if self._pushed.get(p) != e.etag}
        dropped = [p for p in self._pushed if p not in current]
        if not changed and not dropped:
            return
        self._pushed = {p: e.etag for p, e in current.items()}
        for notice in self._pages_notices(changed, dropped):
            await self._to_all(notice)

    async def broadcast(self, topic: str, data: dict[str, Any]) -> None:
        """Send a Notice to every connected gateway."""
        await self._to_all(proto.Notice(topic, data))

    async def _to_all(self, msg: proto.Message) -> None:
        """One message to every gateway, returning once each connection has taken it (so that
        what follows on any connection comes after it); a gateway that went away is its reader's
        business."""
        queued = []
        for ch in list(self.channels):
            try:
                queued.append((ch, ch.send_nowait(msg)))
            except (proto.BrokenChannel, trio.ClosedResourceError, proto.EncodeError):
                pass
        for ch, end in queued:
            try:
                await ch.wait_flushed(end)
            except (proto.BrokenChannel, trio.ClosedResourceError):
                pass

    async def begin_closing(self, reason: str) -> None:
        """Stop taking connections, tell every gateway, exit when they have all gone."""
        if self.closing:
            return
        self.closing = reason
        self._give_up_name()
        self.closing_event.set()
        for scope in list(self.streams):  # streams never end by themselves: end them now
            scope.cancel()
        await self._to_all(proto.Closing(reason))
        self._check_done()

    def _give_up_name(self) -> None:
        """Tell the fork server we are closing, and remove our socket's name (if it is still ours
        and the sandbox lets us), before telling anyone else: a gateway that then asks the fork
        server for this cenv gets a successor, not us."""
        if self.closing_fd is not None:
            try:
                os.write(self.closing_fd, b"c")
            except OSError:
                pass
            os.close(self.closing_fd)
            self.closing_fd = None
        if self.socket_name is None:
            return
        path, inode = self.socket_name
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass

    def _check_done(self) -> None:
        if self.closing and not self.channels:
            self.done.set()

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """One gateway connection: Hello, then requests until EOF."""
        ch = MessageChannel(stream)
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                hello = await ch.receive()
            if not isinstance(hello, proto.Hello) or hello.version != proto.PROTOCOL_VERSION:
                await ch.send(proto.Error(0, "version_mismatch", f"this worker speaks protocol {proto.PROTOCOL_VERSION}"))
                await stream.aclose()
                return
            await ch.send(proto.Hello(proto.PROTOCOL_VERSION, "worker",
                                      {"pid": os.getpid(), "secret": self.tenant.secret,
                                       "settings": self.tenant.gateway_settings()}))
        except (trio.TooSlowError, trio.EndOfChannel, proto.ProtocolError, proto.BrokenChannel):
            await stream.aclose()
            return
        self.channels.add(ch)
        scopes: dict[int, trio.CancelScope] = {}
        gateway = hello.info.get("pid") if isinstance(hello.info.get("pid"), int) else 0  # for the crash marker
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ch.run_writer)  # writes all the answers of a scheduler batch at once
                try:
                    # a peer may leave at any moment, even before these: that ends its connection only
                    await self.push_pages()  # bring the other gateways up to date first
                    for notice in self._pages_notices(self._public_pages(), [], reset=True):
                        await ch.send_soon(notice)
                    if self.closing:
                        await ch.send_soon(proto.Closing(self.closing))
                    async for msg in ch:
                        if isinstance(msg, proto.Request):
                            scope = scopes[msg.id] = trio.CancelScope()
                            nursery.start_soon(self.run_request, ch, msg, scope, scopes, gateway)
                        elif isinstance(msg, proto.Credit):
                            if (w := self.windows.get((ch, msg.id))) is not None:
                                w.grant(msg.size)
                        elif isinstance(msg, proto.Cancel):
                            if (s := scopes.get(msg.id)) is not None:
                                s.cancel()
                        elif isinstance(msg, proto.Shutdown):
                            await self.begin_closing("shutdown")
                except (proto.ProtocolError, proto.BrokenChannel, trio.ClosedResourceError) as exc:
                    print(f"wce worker {self.tenant.cenv_id}: dropping connection: {exc}", file=sys.stderr)
                nursery.cancel_scope.cancel()  # the gateway is gone: nobody wants these answers
        finally:
            self.channels.discard(ch)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self._check_done()

    async def run_request(self, ch: MessageChannel, req: proto.Request,
                          scope: trio.CancelScope, scopes: dict[int, trio.CancelScope], gateway: int = 0) -> None:
        """Answer one request on its channel (from the gateway process `gateway`)."""
        self.inflight += 1
        mark = crash_marker.begin(gateway, req.id)
        try:
            with scope:
                limits.arm_cpu(int(self.tenant.settings["cpu_ms_per_request"]))
                live = req.identity is not None and req.identity.get("confirm") and self._session_live(req.identity)
                resp = await app.handle(self.tenant, req)
                await self.push_pages()
                if live:
                    ch.send_nowait(proto.Notice("session", {"id": req.id}))  # the gateway may keep the token
                if isinstance(resp, StreamReply):
                    await self.send_stream(ch, req.id, resp)
                    return
                await self.send_answer(ch, req, resp)
                if self.tenant.retire_after_reply:  # a script blew the memory cap: start afresh
                    await self.begin_closing("memory")
        except (proto.BrokenChannel, trio.ClosedResourceError):
            pass
        finally:
            crash_marker.end(mark, ch)
            scopes.pop(req.id, None)
            self.inflight -= 1
            self.last_active = trio.current_time()

    def _session_live(self, identity: dict[str, Any]) -> bool:
        """Whether the session a request's verified token names is live. Asked before the request
        is handled, which asks again from the session cache (no second query); never after it: the
        request's flush ends its read of `PRAGMA data_version`, and a read after it would serve the
        next request (a session revoked by another process in between would pass it)."""
        try:
            return self.tenant.identify(identity) is not None
        except Exception:  # Unauthenticated, or the database failed: then the token is just not kept
            return False

    async def send_answer(self, ch: MessageChannel, req: proto.Request, resp: proto.Response) -> None:
        """A whole answer: in one Response up to INLINE_MAX; larger, in pieces the gateway takes as
        fast as its client does (StreamStart with the size, StreamChunks within the Credits it
        sends, StreamEnd), so no gateway holds a large answer for a client that does not read;
        over MAX_ANSWER, an error."""
        size = len(resp.body)
        if size <= INLINE_MAX:
            try:
                await ch.send_soon(resp)
            except proto.EncodeError:
                traceback.print_exc()
                await ch.send_soon(proto.Error(req.id, "internal", "internal error"))
            return
        if size > MAX_ANSWER:
            print(f"wce worker {self.tenant.cenv_id}: the answer to {req.method} {req.path} has {size} bytes, "
                  f"over the limit of {MAX_ANSWER}", file=sys.stderr)
            await ch.send_soon(proto.Error(req.id, "internal", f"the answer is larger than {MAX_ANSWER >> 20} MiB"))
            return
        window = self.windows[(ch, req.id)] = Window()
        try:
            await ch.send_soon(proto.StreamStart(req.id, resp.status, resp.headers, size))
            for i in range(0, size, PIECE):
                piece = resp.body[i:i + PIECE]
                await window.wait_open(len(piece))  # a Cancel from the gateway ends the wait
                await ch.send_soon(proto.StreamChunk(req.id, piece))  # queued whole: never half a frame
            await ch.send_soon(proto.StreamEnd(req.id))
        finally:
            del self.windows[(ch, req.id)]

    async def send_stream(self, ch: MessageChannel, req_id: int, reply: StreamReply) -> None:
        """Send a streamed answer: StreamStart, a StreamChunk per piece, StreamEnd.

        It ends when the stream does, or at once when the worker begins closing (then StreamEnd is
        still sent, so the client sees a clean end). A Cancel from the gateway cancels the
        request's scope instead: nothing more is sent. Either way the stream is closed. Each frame
        is sent shielded, so a cancellation never leaves half a frame on the connection.
        """
        window = self.windows[(ch, req_id)] = Window()
        try:
            with trio.CancelScope(shield=True):
                await ch.send(proto.StreamStart(req_id, reply.status, reply.headers))
            with trio.CancelScope() as ending:
                self.streams.add(ending)
                if self.closing:
                    ending.cancel()
                try:
                    async with contextlib.aclosing(reply.stream.chunks()) as chunks:  # type: ignore[type-var]
                        async for data in chunks:
                            await window.wait_open(len(data))  # the gateway's client has taken enough
                            with trio.CancelScope(shield=True):
                                await ch.send(proto.StreamChunk(req_id, data))
                finally:
                    self.streams.discard(ending)
            with trio.CancelScope(shield=True):
                await ch.send(proto.StreamEnd(req_id))
        finally:
            del self.windows[(ch, req_id)]
            reply.stream.close()

    async def watch_idle(self) -> None:
        """Begin closing after `idle_timeout` seconds with nothing in flight."""
        timeout = self.config.idle_timeout
        while not self.closing:
            await trio.sleep(min(max(timeout / 4, 0.05), 5.0))
            if self.inflight == 0 and trio.current_time() - self.last_active >= timeout:
                await self.begin_closing("idle")

    async def watch_signals(self) -> None:
        """SIGTERM: close gracefully, like a Shutdown message."""
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                await self.begin_closing("shutdown")


async def serve(listen_fd: int, tenant: Tenant, config: ServerConfig,
                socket_name: tuple[Path, int] | None = None, closing_fd: int | None = None) -> None:
    """Run until closed and drained."""
    sock = trio.socket.fromfd(listen_fd, socket.AF_UNIX, socket.SOCK_STREAM)
    os.close(listen_fd)
    listener = trio.SocketListener(sock)
    worker = Worker(tenant, config)
    worker.socket_name = socket_name
    worker.closing_fd = closing_fd
    async with trio.open_nursery() as nursery:
        async def accept_until_closing() -> None:
            with trio.CancelScope() as cs:
                nursery.start_soon(_cancel_on, worker.closing_event, cs)
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(worker.serve_connection, stream)
            await listener.aclose()

        nursery.start_soon(accept_until_closing)
        nursery.start_soon(worker.watch_idle)
        nursery.start_soon(worker.watch_signals)
        await worker.closing_event.wait()
        with trio.move_on_after(DRAIN_TIMEOUT):
            await worker.done.wait()
        nursery.cancel_scope.cancel()


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def lock_cenv(config: ServerConfig, cenv_id: str, timeout: float = DRAIN_TIMEOUT + 5) -> int | None:
    """Take the cenv's lock, held for the worker's whole life (the kernel drops it at exit): a
    successor started while its predecessor drains waits here, so one cenv never has two workers.
    The descriptor, or None if the predecessor did not exit in time."""
    fd = os.open(config.runtime_path / f"{cenv_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.005)


def apply_caps(conn: apsw.Connection, settings: Mapping[str, Any]) -> None:
    """Put this worker under the cenv's caps: its address space (for good: a worker cannot raise
    it again, so new caps need a new worker), a CPU budget armed for what runs before the first
    request, and the database size. Called before anything a tenant wrote runs (finding H2)."""
    limits.apply_memory(int(settings["memory_mb"]))
    limits.arm_cpu(int(settings["cpu_ms_per_request"]))
    db.set_size_cap(conn, int(settings["max_db_mb"]))


def open_under_caps(cenv_id: str, config: ServerConfig) -> Tenant:
    """Open the cenv in this (worker) process, capped before anything its tenant wrote can run:
    at the server's memory ceiling before the file is opened, at the cenv's own caps once they are
    read (apply_caps)."""
    limits.install_cpu_handler()
    limits.apply_memory(config.memory_mb, final=False)
    return Tenant.open(cenv_id, path_for(config.data_path, cenv_id), config, limit=apply_caps)


def run_worker(listen_fd: int, cenv_id: str, config: ServerConfig, socket_name: Path | None = None,
               socket_inode: int = 0, *, closing_fd: int | None = None) -> int:
    """Entry point in a freshly forked child; returns the exit code. When the worker begins closing
    it writes on `closing_fd` (the fork server then starts a successor for the next spawn) and
    removes `socket_name` (with the inode the fork server bound) if its sandbox lets it. It enters
    the sandbox once it holds the cenv's lock, before it opens the file."""
    if lock_cenv(config, cenv_id) is None:
        print(f"wce worker {cenv_id}: the previous worker of this cenv did not exit", file=sys.stderr)
        return 3
    try:
        sandbox.enter(config, cenv_id)
    except sandbox.SandboxError as exc:
        print(f"wce worker {cenv_id}: {exc}", file=sys.stderr)
        return 4
    try:
        tenant = open_under_caps(cenv_id, config)
    except Exception:
        print(f"wce worker {cenv_id}: cannot open the cenv", file=sys.stderr)
        traceback.print_exc()
        return 2
    try:
        trio.run(serve, listen_fd, tenant, config, (socket_name, socket_inode) if socket_name else None, closing_fd)
    finally:
        tenant.close()
    return 0
