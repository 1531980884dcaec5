"""The gateway <-> worker wire: length-prefixed msgpack frames over Unix stream sockets.

Knows nothing of the rest of WCE. `framing` and `codec` are sans-IO; `channel` is the trio adapter.
`zygote` is the fork server's own protocol (gateway <-> zygote), on the same framing.
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
from .framing import MAX_FRAME, FrameDecoder, FrameReader, frame
from .messages import (
    PROTOCOL_VERSION,
    STREAM_WINDOW,
    Headers,
    Cancel,
    Credit,
    Closing,
    Error,
    Hello,
    Message,
    Notice,
    PagePush,
    PushedPage,
    Request,
    Response,
    Shutdown,
    StreamChunk,
    StreamEnd,
    StreamStart,
)

__all__ = [
    "MAX_FRAME", "PROTOCOL_VERSION", "STREAM_WINDOW", "BrokenChannel", "Cancel", "Closing", "Credit", "DecodeError",
    "EncodeError", "Error", "FrameDecoder", "FrameReader", "FrameTooLarge", "Headers", "Hello", "Message", "Notice",
    "PagePush", "ProtocolError", "PushedPage", "Request", "Response", "Shutdown", "StreamChunk", "StreamEnd",
    "StreamStart", "TornFrame", "UnknownKind", "VersionMismatch", "decode", "encode", "frame",
]
