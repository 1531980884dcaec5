"""The gateway's side of one worker: a multiplexed connection with request ids.

One reader task owns the receive side and routes each answer to the exchange waiting for it. When
the connection breaks (the worker died), every exchange in flight fails with WorkerGone, which the
HTTP layer answers with 503.
"""

from __future__ import annotations

import select
import signal
from dataclasses import dataclass
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from wce import proto
from wce.proto.channel import MessageChannel

from wce.core.throttle import SlidingWindow

from .tokens import TokenCache

STREAM_BUFFER = 64


@dataclass(frozen=True, slots=True)
class CachedPage:
    """A public page as its worker last pushed it: answered by the gateway without a hop."""

    etag: str
    body: bytes
    headers: list[tuple[bytes, bytes]]
    headers_304: list[tuple[bytes, bytes]]


def _raw(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in headers]


class WorkerGone(Exception):
    """The worker went away before answering."""


Answer = proto.Response | proto.StreamStart | proto.Error


class Exchange:
    """One request in flight: its first answer, then (for a stream) chunks until the end."""

    def __init__(self, client: WorkerClient, req_id: int, receiver: trio.MemoryReceiveChannel[Any]) -> None:
        self.client = client
        self.id = req_id
        self._receiver = receiver
        self.finished = False

    async def _next(self) -> proto.Message:
        try:
            return await self._receiver.receive()
        except trio.EndOfChannel:
            self.finished = True
            raise WorkerGone from None

    async def first(self) -> Answer:
        """The answer (or the head of a stream)."""
        msg = await self._next()
        if isinstance(msg, proto.StreamStart):
            self.client._streaming(self.id)
        else:
            self.finished = True
            self.client._forget(self.id)
        return msg  # type: ignore[return-value]

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body of a streamed answer."""
        while True:
            msg = await self._next()
            if isinstance(msg, proto.StreamChunk):
                yield msg.data
            else:
                self.finished = True
                self.client._forget(self.id)
                return

    async def aclose(self) -> None:
        """Give up on the answer (client went away): tell the worker if it is still working."""
        if not self.finished:
            self.finished = True
            self.client._forget(self.id)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self.client.channel.send(proto.Cancel(self.id))
                except (proto.BrokenChannel, trio.ClosedResourceError):
                    pass


class WorkerClient:
    """A live worker as the gateway sees it."""

    def __init__(self, cenv: str, pid: int, pidfd: int, channel: MessageChannel, secret: bytes,
                 on_closing: Callable[[WorkerClient], None], on_lost: Callable[[WorkerClient], None]) -> None:
        self.cenv = cenv
        self.pid = pid
        self.pidfd = pidfd
        self.channel = channel
        self.tokens = TokenCache(secret, cenv)
        self.last_used = trio.current_time()
        self.closing = False
        self.exited = trio.Event()
        self.idle = trio.Event()
        self.idle.set()
        self._on_closing = on_closing
        self._on_lost = on_lost
        self._next_id = 1
        self._waiters: dict[int, trio.MemorySendChannel[Any]] = {}
        self._streams: set[int] = set()  # exchanges past StreamStart: open-ended, not "in flight"
        self.rate_limit = 0
        self.limiter: SlidingWindow | None = None
        self.pages: dict[str, CachedPage] = {}  # public pages by path (the worker keeps them current)

    def apply_pages(self, data: dict[str, Any]) -> None:
        """A pages Notice: replace (reset) or update the cached public pages."""
        if data.get("reset"):
            self.pages = {}
        for p in data.get("pages", ()):
            try:
                path = p["path"]
                if p.get("drop"):
                    self.pages.pop(path, None)
                else:
                    headers = [*_raw(p["headers"]), (b"content-length", str(len(p["body"])).encode())]
                    self.pages[path] = CachedPage(p["etag"], p["body"], headers, _raw(p["headers_304"]))
            except (KeyError, TypeError):
                continue  # a malformed entry is skipped; the worker still answers that path

    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Settings the gateway enforces for this cenv (from Hello, then from Notices)."""
        limit = settings.get("rate_limit_per_minute")
        if isinstance(limit, int) and limit >= 0 and limit != self.rate_limit:
            self.rate_limit = limit
            self.limiter = SlidingWindow(limit, 60.0) if limit else None

    def retry_after(self, client: str) -> int | None:
        """Seconds the client must wait under the cenv's rate limit, or None (and count the request)."""
        if self.limiter is None:
            return None
        retry = self.limiter.retry_after(client)
        if retry is None:
            self.limiter.hit(client)
        return retry

    @property
    def inflight(self) -> int:
        """Requests sent and not yet answered in full."""
        return len(self._waiters)

    async def send_request(self, **fields: Any) -> Exchange:
        """Send a Request (fields as in proto.Request, without id); WorkerGone if the link is down."""
        req_id = self._next_id
        self._next_id += 1
        sender, receiver = trio.open_memory_channel[Any](STREAM_BUFFER)
        self._waiters[req_id] = sender
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        self.last_used = trio.current_time()
        try:
            await self.channel.send(proto.Request(id=req_id, **fields))
        except (proto.BrokenChannel, trio.ClosedResourceError):
            self._forget(req_id)
            raise WorkerGone from None
        return Exchange(self, req_id, receiver)

    def _forget(self, req_id: int) -> None:
        sender = self._waiters.pop(req_id, None)
        self._streams.discard(req_id)
        if sender is not None:
            sender.close()
        self._check_idle()

    def _streaming(self, req_id: int) -> None:
        """A stream has started: a graceful stop need not wait for it (the worker ends it)."""
        self._streams.add(req_id)
        self._check_idle()

    def _check_idle(self) -> None:
        if len(self._waiters) <= len(self._streams):
            self.idle.set()

    async def run_reader(self) -> None:
        """Route answers until the connection ends; then fail whatever is still waiting."""
        try:
            async for msg in self.channel:
                if isinstance(msg, proto.Closing):
                    self.closing = True
                    self._on_closing(self)
                    continue
                if isinstance(msg, proto.Notice):
                    if msg.topic == "settings":
                        self.apply_settings(msg.data)
                    elif msg.topic == "pages":
                        self.apply_pages(msg.data)
                    continue
                req_id = getattr(msg, "id", None)
                sender = self._waiters.get(req_id) if req_id is not None else None
                if sender is None:
                    continue  # an answer nobody waits for any more (cancelled)
                try:
                    sender.send_nowait(msg)
                except trio.WouldBlock:  # a stream whose client reads too slowly: drop it
                    self._forget(req_id)  # type: ignore[arg-type]
                    await self.channel.send(proto.Cancel(req_id))  # type: ignore[arg-type]
        except (proto.ProtocolError, proto.BrokenChannel, trio.ClosedResourceError):
            pass
        finally:
            for req_id in list(self._waiters):
                self._forget(req_id)
            self._on_lost(self)

    async def aclose(self) -> None:
        """Close the connection (the worker exits once all its gateways have closed)."""
        with trio.CancelScope(shield=True):
            await self.channel.aclose()

    def died(self) -> bool:
        """True if the process has exited, asked of the kernel now (its pidfd is readable) rather
        than waiting for the watcher task to notice: no request is sent to a dead worker."""
        if self.exited.is_set():
            return True
        try:
            return bool(select.select([self.pidfd], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def kill(self) -> None:
        """SIGKILL the worker, by pidfd so a recycled pid can never be hit."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
