"""Length-prefixed frames, sans-IO: a 4-byte big-endian length, then the payload.

The decoder checks the announced length before buffering, so a hostile peer cannot make us hold
more than one maximal frame. `FrameReader` reads frames one at a time for the plain socket users
(the fork server and its clients, `wce delete`): the one loop they share, whatever their I/O.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Awaitable, Callable

from .errors import FrameTooLarge, TornFrame

MAX_FRAME = 16 << 20
_HEADER = struct.Struct(">I")


def frame(payload: bytes, max_size: int = MAX_FRAME) -> bytes:
    """Return the payload with its length prefix."""
    if len(payload) > max_size:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds {max_size}")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Feed it bytes as they arrive; it returns the complete payloads."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_size

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every payload completed by them, in order."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if n > self._max:
                raise FrameTooLarge(f"peer announced a frame of {n} bytes (limit {self._max})")
            if end - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)

    def eof(self) -> None:
        """Tell the decoder the stream ended; raises TornFrame if that was mid-frame."""
        if self._buf:
            raise TornFrame(f"stream ended with {len(self._buf)} bytes of an unfinished frame")


class FrameReader:
    """The frames of one stream, one at a time: a read may bring several (kept for the next call)
    or part of one (read again). The caller does the I/O: `recv` returns the next bytes, b"" at the
    end of the stream. A clean end (at a frame boundary) raises EOFError; an end inside a frame,
    TornFrame."""

    __slots__ = ("_decoder", "_frames")

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self._decoder = FrameDecoder(max_size)
        self._frames: deque[bytes] = deque()

    def read(self, recv: Callable[[], bytes]) -> bytes:
        """The next frame's payload, calling `recv` (which may block) as often as needed."""
        while not self._frames:
            self._feed(recv())
        return self._frames.popleft()

    async def read_async(self, recv: Callable[[], Awaitable[bytes]]) -> bytes:
        """`read` for an async `recv`."""
        while not self._frames:
            self._feed(await recv())
        return self._frames.popleft()

    def _feed(self, data: bytes) -> None:
        if not data:
            self._decoder.eof()
            raise EOFError("the stream ended")
        self._frames.extend(self._decoder.feed(data))
