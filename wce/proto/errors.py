"""Errors of the wire. Each says whose fault it is.

    ProtocolError              the peer sent something we cannot accept
    ├── FrameTooLarge          a frame header announced more than the limit
    ├── DecodeError            the payload is not a valid message (garbage, wrong shape or types)
    │   └── UnknownKind        a well-formed payload with a message kind we do not know
    ├── VersionMismatch        the peer speaks another protocol version
    └── TornFrame              the stream ended inside a frame
    EncodeError                we were asked to send something msgpack cannot hold (a bug or bad data
                               of ours, never the peer's): e.g. an int >= 2**64
    BrokenChannel              the stream failed under us (peer died, socket reset)
"""


class ProtocolError(Exception):
    """The peer broke the protocol; the connection must be dropped."""


class FrameTooLarge(ProtocolError):
    """A frame header announced a payload above the size limit. Raised before reading it."""


class DecodeError(ProtocolError):
    """A frame's payload is not a valid message."""


class UnknownKind(DecodeError):
    """A payload names a message kind outside the closed set."""


class VersionMismatch(ProtocolError):
    """The peer's Hello carries another protocol version."""


class TornFrame(ProtocolError):
    """The stream ended in the middle of a frame (not at a frame boundary)."""


class EncodeError(Exception):
    """A message could not be encoded; nothing was sent. Not a protocol violation by the peer."""


class BrokenChannel(Exception):
    """The underlying stream failed: the peer went away or the socket broke."""
