"""The gateway's side of one worker: a multiplexed connection with request ids.

One reader task owns the receive side and routes each answer to the exchange waiting for it; the
channel's writer task, run beside it, writes the requests of a scheduler batch in one write. When
the connection breaks (the worker died), every exchange in flight fails: with NotSent if its
request was never written (the HTTP layer sends it once more, to a new worker), else with
WorkerGone, answered with 503.

What a worker makes the gateway hold is bounded: its pushed public pages and the tokens its
sessions use go into the gateway's shared byte budgets (wce.gateway.budget), and a streamed answer
(events, or a large answer in pieces) runs at most proto.STREAM_WINDOW bytes ahead of what the
client has taken: the relay sends a Credit for each piece once the client's socket has taken it.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import trio

from wce import proto
from wce.proto.channel import MessageChannel

from .budget import Budget
from .tokens import TokenCache

STREAM_BUFFER = 64  # chunks of a stream queued for a client that reads too slowly: then it is dropped
PAGE_CACHE_BYTES = 64 << 20  # the default budget for pushed pages (ServerConfig.page_cache_mb)
PAGE_OVERHEAD = 512  # the objects around a cached page's bytes, roughly


@dataclass(frozen=True, slots=True, eq=False)
class CachedPage:
    """A public page as its worker last pushed it: answered by the gateway without a hop. Hashed by
    identity (the page Budget's LRU key)."""

    etag: str
    body: bytes
    headers: list[tuple[bytes, bytes]]
    headers_304: list[tuple[bytes, bytes]]

    @property
    def size(self) -> int:
        """Bytes it holds, as counted against the gateway's page budget."""
        return (len(self.body) + PAGE_OVERHEAD + sum(len(k) + len(v) for k, v in self.headers)
                + sum(len(k) + len(v) for k, v in self.headers_304))


def _raw(headers: proto.Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class WorkerGone(Exception):
    """The worker went away before answering."""


class NotSent(WorkerGone):
    """The worker went away before the request reached it (its bytes never left this process, or
    the kernel refused them): safe to send again, to a new worker."""


Answer = proto.Response | proto.StreamStart | proto.Error


class Exchange:
    """One request in flight: its first answer, then (for a stream) chunks until the end.

    The reader task hands it messages and wakes the one task waiting on it with
    `trio.lowlevel.reschedule`: no memory channel or Event per request, which cost more than the
    rest of the exchange did (gateway profile, 2026-11).
    """

    __slots__ = ("client", "id", "end", "finished", "token", "_queue", "_waiter", "_error")

    def __init__(self, client: WorkerClient, req_id: int, end: int, token: tuple[str, Any] | None = None) -> None:
        self.client = client
        self.id = req_id
        self.end = end  # where the request's frame ends in the channel (see MessageChannel.flushed)
        self.finished = False
        self.token = token  # (token, claims) to cache if the worker accepts the session
        self._queue: deque[proto.Message] = deque()
        self._waiter: trio.lowlevel.Task | None = None
        self._error: type[WorkerGone] | None = None

    def _deliver(self, msg: proto.Message) -> bool:
        """From the reader: one more message. False if a stream's client reads too slowly."""
        if len(self._queue) >= STREAM_BUFFER:
            return False
        self._queue.append(msg)
        self._wake()
        return True

    def _fail(self, error: type[WorkerGone]) -> None:
        """From the reader: no more messages will come; what is queued is still read first."""
        self._error = error
        self._wake()

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _next(self) -> proto.Message:
        while not self._queue:
            if self._error is not None:
                self.finished = True
                raise self._error
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        return self._queue.popleft()

    async def first(self) -> Answer:
        """The answer (or the head of a stream). NotSent if the request never reached the worker."""
        msg = await self._next()
        if not isinstance(msg, proto.StreamStart):
            self.finished = True
        return msg  # type: ignore[return-value]

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body of a streamed answer. Call `credit` for each piece once the client has it: the
        worker sends more only then."""
        while True:
            msg = await self._next()
            if isinstance(msg, proto.StreamChunk):
                yield msg.data
            else:
                self.finished = True
                return

    def credit(self, size: int) -> None:
        """The client has taken `size` more bytes of the stream: the worker may send as many more."""
        if not self.finished:
            try:
                self.client.channel.send_nowait(proto.Credit(self.id, size))
            except (proto.BrokenChannel, trio.ClosedResourceError):
                pass  # the reader fails the exchange

    def close(self) -> None:
        """Done with the exchange. If the answer is not all in (the client went away, a stream was
        cut short), forget it and tell the worker to stop working on it."""
        if not self.finished:
            self.finished = True
            self.client._cancel(self.id)


class WorkerClient:
    """A live worker as the gateway sees it."""

    def __init__(self, cenv: str, pid: int, pidfd: int, channel: MessageChannel, secret: bytes,
                 on_closing: Callable[[WorkerClient], None], on_lost: Callable[[WorkerClient], None],
                 page_budget: Budget | None = None, token_budget: Budget | None = None) -> None:
        self.cenv = cenv
        self.pid = pid
        self.pidfd = pidfd
        self.channel = channel
        self.tokens = TokenCache(secret, cenv, token_budget)
        self.last_used = trio.current_time()
        self.closing = False
        self.exited = trio.Event()
        self.idle = trio.Event()
        self.idle.set()
        self._on_closing = on_closing
        self._on_lost = on_lost
        self._next_id = 1
        self._waiters: dict[int, Exchange] = {}
        self._lost = False  # the reader has ended: nothing more goes to or comes from this worker
        self._streams: set[int] = set()  # exchanges past StreamStart: open-ended, not "in flight"
        self.rate_limit = 0  # the worker enforces it; while set, its pages are not answered from cache
        # public pages by path (the worker keeps them current), as far as the page budget holds them
        self.pages: dict[str, CachedPage] = {}
        self.page_budget = page_budget if page_budget is not None else Budget(PAGE_CACHE_BYTES)
        self.touch_page = self.page_budget.touch  # a page answered: it is the most recently used

    def apply_pages(self, data: dict[str, Any]) -> None:
        """A pages Notice (its data, a proto.PagePush): replace (reset, perhaps over several
        Notices) or update the cached public pages. A page the budget cannot hold (it evicts the
        least recently used pages of every cenv first) is not cached: its worker answers it."""
        push = proto.PagePush.of(data)  # a malformed entry is skipped; the worker still answers that path
        budget = self.page_budget
        if push.reset:
            budget.release(self.pages)
        for path in push.dropped:
            budget.discard(self.pages, path)
        for p in push.pages:
            headers = [*_raw(p.headers), (b"content-length", str(len(p.body)).encode())]
            page = CachedPage(p.etag, p.body, headers, _raw(p.headers_304))
            budget.put(self.pages, p.path, page, page.size)

    def release(self) -> None:
        """Give back what this worker's pages and tokens hold (the connection ended)."""
        self.page_budget.release(self.pages)
        self.tokens.clear()

    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Settings of this cenv the gateway must know (from Hello, then from Notices)."""
        limit = settings.get("rate_limit_per_minute")
        if isinstance(limit, int) and limit >= 0:
            self.rate_limit = limit

    @property
    def inflight(self) -> int:
        """Requests sent and not yet answered in full."""
        return len(self._waiters)

    async def send_request(self, token: tuple[str, Any] | None = None, **fields: Any) -> Exchange:
        """Send a Request (fields as in proto.Request, without id); WorkerGone if the link is down.

        The request is queued for the channel's writer (run by `run_reader`), which writes every
        request of a scheduler batch at once. If the connection breaks before it is written, the
        exchange fails with NotSent, and the caller may send it to a new worker. `token` is a
        (token, claims) pair the gateway verified but does not keep yet: kept if the worker answers
        that the request's session is live (its identity then asks, with `confirm`).
        """
        if self._lost:
            raise NotSent
        req_id = self._next_id
        self._next_id += 1
        try:
            end = self.channel.send_nowait(proto.Request(id=req_id, **fields))
        except (proto.BrokenChannel, trio.ClosedResourceError):
            raise NotSent from None
        exchange = self._waiters[req_id] = Exchange(self, req_id, end, token)
        if self.idle.is_set():
            self.idle = trio.Event()
        self.last_used = trio.current_time()
        if self.channel.backlog > self.channel.high_water:  # a worker that stopped reading pushes back
            try:
                await self.channel.wait_flushed(end - self.channel.high_water)
            except (proto.BrokenChannel, trio.ClosedResourceError):
                pass  # the reader fails the exchange (NotSent: its bytes were not all written)
        return exchange

    def _forget(self, req_id: int) -> Exchange | None:
        exchange = self._waiters.pop(req_id, None)
        self._streams.discard(req_id)
        self._check_idle()
        return exchange

    def _check_idle(self) -> None:
        if len(self._waiters) <= len(self._streams):
            self.idle.set()

    def _cancel(self, req_id: int) -> None:
        """Drop an exchange whose answer is no longer wanted, and tell the worker (best effort: a
        broken connection cancels everything anyway)."""
        if self._forget(req_id) is not None:
            try:
                self.channel.send_nowait(proto.Cancel(req_id))
            except (proto.BrokenChannel, trio.ClosedResourceError):
                pass

    async def run_reader(self) -> None:
        """Route answers until the connection ends; then fail whatever is still waiting. Runs the
        channel's writer alongside, for the connection's life."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.channel.run_writer)
            try:
                await self._route()
            finally:
                nursery.cancel_scope.cancel()
                self._lost = True
                self.channel.close_sending()  # nothing more reaches this worker: what is queued is NotSent
                flushed = self.channel.flushed
                for exchange in list(self._waiters.values()):
                    self._forget(exchange.id)
                    exchange._fail(NotSent if exchange.end > flushed else WorkerGone)
                self.release()
                self._on_lost(self)

    async def _route(self) -> None:
        waiters = self._waiters
        try:
            async for msg in self.channel:
                kind = type(msg)
                if kind is proto.Response or kind is proto.Error:
                    exchange = waiters.pop(msg.id, None)  # type: ignore[union-attr]
                    if exchange is not None:
                        exchange._deliver(msg)
                        self._check_idle()
                elif kind is proto.StreamChunk or kind is proto.StreamEnd or kind is proto.StreamStart:
                    exchange = waiters.get(msg.id)  # type: ignore[union-attr]
                    if exchange is None:
                        continue  # an answer nobody waits for any more (cancelled)
                    if not exchange._deliver(msg):  # a stream whose client reads too slowly: drop it
                        exchange._fail(WorkerGone)
                        self._cancel(exchange.id)
                    elif kind is proto.StreamStart and msg.size is None:  # type: ignore[union-attr]
                        self._streams.add(exchange.id)  # open-ended: a graceful stop need not wait (the worker ends it)
                        self._check_idle()
                    elif kind is proto.StreamEnd:
                        self._forget(exchange.id)
                elif kind is proto.Closing:
                    self.closing = True
                    self.page_budget.release(self.pages)  # never answered from again (Supervisor.live)
                    self._on_closing(self)
                elif kind is proto.Notice:
                    if msg.topic == "session":  # type: ignore[union-attr]
                        self._accepted(msg.data.get("id"))  # type: ignore[union-attr]
                    elif msg.topic == "settings":  # type: ignore[union-attr]
                        self.apply_settings(msg.data)  # type: ignore[union-attr]
                    elif msg.topic == proto.PagePush.TOPIC and not self.closing:  # type: ignore[union-attr]
                        self.apply_pages(msg.data)  # type: ignore[union-attr]
        except (proto.ProtocolError, proto.BrokenChannel, trio.ClosedResourceError):
            pass

    def _accepted(self, req_id: Any) -> None:
        """The worker found the session of request `req_id` live: keep the token it came with."""
        exchange = self._waiters.get(req_id) if type(req_id) is int else None
        if exchange is not None and exchange.token is not None:
            self.tokens.add(*exchange.token)
            exchange.token = None

    async def aclose(self) -> None:
        """Close the connection (the worker exits once all its gateways have closed)."""
        with trio.CancelScope(shield=True):
            await self.channel.aclose()

    def died(self) -> bool:
        """True if the worker is known to be gone: its process exited (the watcher saw its pidfd)
        or its connection ended (the reader saw it). Not asked of the kernel on every request (a
        select() per request): a request sent to a worker that died unnoticed is not written (the
        socket refuses it) and fails with NotSent, which the caller retries on a new worker."""
        return self._lost or self.exited.is_set()

    def kill(self) -> None:
        """SIGKILL the worker, by pidfd so a recycled pid can never be hit."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
