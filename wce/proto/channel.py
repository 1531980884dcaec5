"""The trio adapter: a message channel over any trio byte stream (a Unix socket in practice).

Sending is split from writing. `send_nowait` only queues a whole frame; one writer task
(`run_writer`, started by the channel's owner) hands everything queued to the kernel in one
`write()` per scheduler batch. Under load one write carries the answers (or requests) of many
HTTP requests and wakes the peer once for all of them, where a write per message cost a syscall,
a lock and a shielded scope each, and woke the peer process once per message (measured: the
send path was 15-17% of both processes' CPU in a py-spy profile of a forwarded request).

Frames never interleave or tear: they are appended whole, synchronously, and only the writer
writes. A writer cancelled in the middle of a frame breaks the channel, so nothing is ever sent
after half a frame. Until a writer runs (a connection's Hello, tests), `send` writes itself,
under a lock and shielded from cancellation, as a plain channel would.

On a socket the channel reads and writes the file descriptor directly and waits with
`trio.lowlevel.wait_readable`/`wait_writable` only when the kernel has nothing to give or take:
trio's `SocketStream` adds a scheduler round trip and a context manager to every call.
"""

from __future__ import annotations

import os
import select
from collections import deque
from collections.abc import Callable

import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from .codec import decode, encode
from .errors import BrokenChannel
from .framing import MAX_FRAME, FrameDecoder, frame
from .messages import Message

_RECV = 65536
HIGH_WATER = 1 << 20  # bytes queued beyond which `send_soon` waits for the writer (backpressure)
_READS_PER_YIELD = 8  # reads that found data at once before the reader lets other tasks run


class MessageChannel:
    """Send and receive whole messages.

    `receive` raises trio.EndOfChannel on a clean EOF at a frame boundary, TornFrame on an EOF inside a
    frame, BrokenChannel when the stream breaks, and ProtocolError subclasses for bad payloads.

    Sending: `send_nowait` queues (the writer task writes), `send_soon` queues and waits only while
    the queue is over `high_water`, `send` returns once the stream has taken the message. Each
    raises BrokenChannel once the stream broke and trio.ClosedResourceError once we closed it.
    `queued` and `flushed` count bytes since the start: `send_nowait` returns the offset at which
    its frame ends, and the frame has reached the stream once `flushed` is past it.
    """

    def __init__(self, stream: trio.abc.Stream, max_frame: int = MAX_FRAME, high_water: int = HIGH_WATER) -> None:
        self.stream = stream
        self.high_water = high_water
        self.queued = 0
        self.flushed = 0
        self._decoder = FrameDecoder(max_frame)
        self._ready: deque[bytes] = deque()
        self._max = max_frame
        # -1 once the socket is closed, so a closed channel never touches a reused descriptor
        self._fileno: Callable[[], int] | None = stream.socket.fileno if isinstance(stream, trio.SocketStream) else None
        self._out = bytearray()  # queued frames the writer has not taken yet
        self._send_lock = trio.Lock()  # direct writes (no writer task) and the writer's start
        self._writer_running = False
        self._parked_writer: Task | None = None
        self._flush_waiters: list[tuple[int, Task]] = []
        self._broken: str | None = None
        self._closed = False
        self._reads_without_wait = 0
        self._poll: select.poll | None = None  # for `unread`

    # ------------------------------------------------------------------ sending

    @property
    def backlog(self) -> int:
        """Bytes queued and not yet taken by the stream."""
        return self.queued - self.flushed

    def send_nowait(self, msg: Message) -> int:
        """Queue one message for the writer; the offset its frame ends at.

        EncodeError leaves the queue untouched. Without a running writer nothing is written until
        `send`/`send_soon` (or a writer) runs: owners that use it start `run_writer`.
        """
        data = frame(encode(msg), self._max)
        self._check_open()
        self._out += data
        self.queued += len(data)
        writer = self._parked_writer
        if writer is not None:
            self._parked_writer = None
            reschedule(writer)
        return self.queued

    async def send_soon(self, msg: Message) -> None:
        """Queue one message; wait only while the backlog is over `high_water` (a slow peer pushes
        back here) or, with no writer running, until it is written."""
        end = self.send_nowait(msg)
        if not self._writer_running:
            await self._write_directly(end)
        elif self.backlog > self.high_water:
            await self.wait_flushed(end - self.high_water)

    async def send(self, msg: Message) -> None:
        """Send one message and return once the stream has taken it."""
        await self.wait_flushed(self.send_nowait(msg))

    async def wait_flushed(self, offset: int) -> None:
        """Wait until the stream has taken every byte before `offset` (see `send_nowait`).

        Not cancellable halfway in the direct mode (no writer): there the caller writes, shielded.
        """
        if self.flushed >= offset:
            return
        if not self._writer_running:
            await self._write_directly(offset)
            return
        self._check_open()
        entry = (offset, current_task())
        self._flush_waiters.append(entry)

        def abort(_: object) -> Abort:
            self._flush_waiters.remove(entry)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)
        if self.flushed < offset:
            self._check_open()
            raise BrokenChannel("the channel closed before the message was written")

    async def run_writer(self) -> None:
        """Write whatever is queued, all of it at once, until the channel closes or breaks.

        The owner runs it as a task for the channel's life. It wakes when `send_nowait` queues
        into an empty queue, so it runs after the other tasks of the current scheduler batch have
        queued theirs: one write per batch, however many messages.
        """
        async with self._send_lock:  # a direct write in progress finishes first
            self._writer_running = True
        try:
            while not self._closed and self._broken is None:
                if not self._out:
                    self._parked_writer = current_task()
                    await wait_task_rescheduled(self._unpark)
                    continue
                data, self._out = self._out, bytearray()
                await self._write(data)
        finally:
            self._writer_running = False
            self._parked_writer = None
            self._wake_flush_waiters()

    def _unpark(self, _: object) -> Abort:
        self._parked_writer = None
        return Abort.SUCCEEDED

    async def _write(self, data: bytearray) -> None:
        """Hand `data` (whole frames) to the stream. A cancellation or failure halfway breaks the
        channel: the rest of the stream would be garbage after a torn frame."""
        if self._fileno is None:
            try:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._break(exc)
                return
            self._advance(len(data))
            return
        view = memoryview(data)
        pos = 0
        try:
            while True:
                try:
                    n = os.write(self._fileno(), view[pos:])
                except BlockingIOError:
                    n = 0
                if n:
                    pos += n
                    self._advance(n)
                if pos == len(data):
                    return
                await trio.lowlevel.wait_writable(self._fileno())
        except (OSError, trio.ClosedResourceError, trio.BusyResourceError) as exc:
            self._break(exc)
        except BaseException:
            self._break(RuntimeError("writer cancelled inside a frame"))
            raise
        finally:
            view.release()

    async def _write_directly(self, offset: int) -> None:
        """No writer task: write the queue ourselves, shielded (half a frame must never be left)."""
        with trio.CancelScope(shield=True):
            async with self._send_lock:
                while self.flushed < offset:
                    if self._writer_running:
                        break  # it started while we waited for the lock: it writes from here on
                    self._check_open()
                    data, self._out = self._out, bytearray()
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self._break(exc)
                        self._check_open()
                    self._advance(len(data))
        if self.flushed < offset:
            await self.wait_flushed(offset)

    def _advance(self, n: int) -> None:
        self.flushed += n
        if self._flush_waiters:
            self._wake_flush_waiters()

    def _wake_flush_waiters(self) -> None:
        """Wake the waiters whose bytes are written; all of them once nothing more will be."""
        done = self._closed or self._broken is not None or not self._writer_running
        keep = []
        for offset, task in self._flush_waiters:
            if done or offset <= self.flushed:
                reschedule(task)
            else:
                keep.append((offset, task))
        self._flush_waiters = keep

    def _break(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = str(exc) or type(exc).__name__
        self._out.clear()
        self._wake_flush_waiters()

    def _check_open(self) -> None:
        if self._broken is not None:
            raise BrokenChannel(self._broken)
        if self._closed:
            raise trio.ClosedResourceError("the channel is closed")

    # ------------------------------------------------------------------ receiving

    async def receive(self) -> Message:
        """Wait for the next message."""
        while not self._ready:
            data = await self._receive_some()
            if not data:
                self._decoder.eof()
                raise trio.EndOfChannel
            self._ready.extend(self._decoder.feed(data))
        return decode(self._ready.popleft())

    async def _receive_some(self) -> bytes:
        if self._fileno is None:
            try:
                return await self.stream.receive_some(_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise BrokenChannel(str(exc) or type(exc).__name__) from exc
        await trio.lowlevel.checkpoint_if_cancelled()
        self._reads_without_wait += 1
        if self._reads_without_wait > _READS_PER_YIELD:  # a peer that never pauses starves nobody
            self._reads_without_wait = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        try:
            while True:
                try:
                    return os.read(self._fileno(), _RECV)
                except BlockingIOError:
                    self._reads_without_wait = 0
                    await trio.lowlevel.wait_readable(self._fileno())
        except (OSError, trio.ClosedResourceError, trio.BusyResourceError) as exc:
            raise BrokenChannel(str(exc) or type(exc).__name__) from exc

    def unread(self) -> bool:
        """True if a message has arrived that `receive` has not returned yet (decoded and waiting,
        or still in the socket). Asked without waiting: one poll() at most."""
        if self._ready:
            return True
        if self._fileno is None:
            return False
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self._fileno(), select.POLLIN)
        return bool(self._poll.poll(0))

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Close the stream. Queued messages are dropped; waiting senders get ClosedResourceError."""
        self.close_sending()
        await self.stream.aclose()

    def close_sending(self) -> None:
        """Drop what is queued and refuse any further send (the peer is gone or going); the
        writer task ends. Receiving is unaffected."""
        self._closed = True
        self._out.clear()
        writer = self._parked_writer
        if writer is not None:
            self._parked_writer = None
            reschedule(writer)
        self._wake_flush_waiters()

    def __aiter__(self) -> MessageChannel:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
