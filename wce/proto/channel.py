"""The trio adapter: a message channel over any trio byte stream (a Unix socket in practice)."""

from __future__ import annotations

from collections import deque

import trio

from .codec import decode, encode
from .errors import BrokenChannel
from .framing import MAX_FRAME, FrameDecoder, frame
from .messages import Message

_RECV = 65536


class MessageChannel:
    """Send and receive whole messages.

    `receive` raises trio.EndOfChannel on a clean EOF at a frame boundary, TornFrame on an EOF inside a
    frame, BrokenChannel when the stream breaks, and ProtocolError subclasses for bad payloads.
    Sends are serialised by a lock so frames from concurrent tasks never interleave.
    """

    def __init__(self, stream: trio.abc.Stream, max_frame: int = MAX_FRAME) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame)
        self._ready: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self._max = max_frame

    async def send(self, msg: Message) -> None:
        """Encode and send one message (EncodeError leaves the stream untouched)."""
        await self.send_bytes(frame(encode(msg), self._max))

    async def send_bytes(self, data: bytes) -> None:
        """Send pre-framed bytes (one or several frames).

        Shielded: a cancellation must never leave half a frame on the stream, which would make
        every later message on the connection garbage. A peer that stops reading is a dead peer:
        its owner kills it, which breaks the send.
        """
        with trio.CancelScope(shield=True):
            async with self._send_lock:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise BrokenChannel(str(exc) or type(exc).__name__) from exc

    async def receive(self) -> Message:
        """Wait for the next message."""
        while not self._ready:
            try:
                data = await self.stream.receive_some(_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise BrokenChannel(str(exc) or type(exc).__name__) from exc
            if not data:
                self._decoder.eof()
                raise trio.EndOfChannel
            self._ready.extend(self._decoder.feed(data))
        return decode(self._ready.popleft())

    async def aclose(self) -> None:
        """Close the stream; pending sends of other tasks fail with BrokenChannel."""
        await self.stream.aclose()

    def __aiter__(self) -> MessageChannel:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
