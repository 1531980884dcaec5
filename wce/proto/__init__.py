"""The gateway <-> worker wire: length-prefixed msgpack frames over Unix stream sockets.

Knows nothing of the rest of WCE. `framing` and `codec` are sans-IO; `channel` is the trio adapter.
"""

from .codec import decode, encode
from .errors import (
    BrokenChannel,
    DecodeError,
    EncodeError,
    FrameTooLarge,
    ProtocolError,
    TornFrame,
    UnknownKind,
    VersionMismatch,
)
from .framing import MAX_FRAME, FrameDecoder, frame
from .messages import (
    PROTOCOL_VERSION,
    STREAM_WINDOW,
    Cancel,
    Credit,
    Closing,
    Error,
    Hello,
    Message,
    Notice,
    Request,
    Response,
    Shutdown,
    StreamChunk,
    StreamEnd,
    StreamStart,
)

__all__ = [
    "MAX_FRAME", "PROTOCOL_VERSION", "STREAM_WINDOW", "BrokenChannel", "Cancel", "Closing", "Credit", "DecodeError",
    "EncodeError",
    "Error", "FrameDecoder", "FrameTooLarge", "Hello", "Message", "Notice", "ProtocolError", "Request", "Response",
    "Shutdown", "StreamChunk", "StreamEnd", "StreamStart", "TornFrame", "UnknownKind", "VersionMismatch",
    "decode", "encode", "frame",
]
