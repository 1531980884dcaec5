"""The closed set of messages between a gateway and a worker.

Requests, responses (whole or streamed as start/chunk/end), errors, and control messages
(Hello, Cancel, Shutdown, Closing). Every message validates its own field types, so a decoded
message is known to be well-typed and the worker never meets a surprise deep in a handler.

Conversation on one connection (the gateway speaks first):

    gateway -> Hello(version, "gateway", {})      worker -> Hello(version, "worker", {pid, ...})
    gateway -> Request(id=1) ...                  worker -> Response(id=1) | Error(id=1) |
                                                            StreamStart(id=1) StreamChunk* StreamEnd
    gateway -> Credit(id, size) the gateway has passed `size` more bytes of a stream on to its client
    gateway -> Cancel(id)       the client of a stream went away
    gateway -> Shutdown()       finish what is in flight, then exit when every connection closed
    worker  -> Closing(reason)  the worker is going away (idle, shutdown); send it nothing new
    worker  -> Notice(topic, data)  settings the gateway enforces have changed, public pages (the
                                    data is a PagePush), a session the worker accepted

Flow control: a streamed answer (events, or a whole answer too large for one Response, sent in
pieces with its `size`) may run at most STREAM_WINDOW bytes ahead of the Credits its gateway sent,
so a gateway holds no more than that of an answer its client does not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import DecodeError

PROTOCOL_VERSION = 2

STREAM_WINDOW = 512 * 1024
"""Bytes of a stream's chunks a worker may send beyond what the gateway has credited."""

Headers = list[tuple[str, str]]


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(what)


def _check_headers(headers: Any, what: str) -> None:
    # on every request, both ways: no message text is built unless a check fails
    if not isinstance(headers, list):
        raise DecodeError(f"{what}: headers must be a list")
    for pair in headers:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise DecodeError(f"{what}: each header must be a pair of strings")


def _check_id(value: Any, what: str) -> None:
    if not (type(value) is int and 0 <= value < 2**63):
        raise DecodeError(f"{what}: id must be a non-negative int")


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way. `info` carries worker facts (pid, ...) back to the gateway."""

    KIND: ClassVar[int] = 1
    version: int
    role: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(type(self.version) is int, "Hello: version must be an int")
        _check(self.role in ("gateway", "worker"), "Hello: role must be 'gateway' or 'worker'")
        _check(isinstance(self.info, dict), "Hello: info must be a map")


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request for a cenv, already authenticated by the gateway.

    `path` is the part after `/{cenv}` (always starting with '/'); `client` the caller's address;
    `scheme` 'http' or 'https'; `identity` the verified token's claims (`sub`, `jti`, `role`, and
    `via`: 'bearer' or 'cookie') or None for an anonymous caller.
    """

    KIND: ClassVar[int] = 2
    id: int
    cenv: str
    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    client: str
    scheme: str
    identity: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "Request")
        for name in ("cenv", "method", "path", "query", "client", "scheme"):
            if not isinstance(getattr(self, name), str):
                raise DecodeError(f"Request: {name} must be a string")
        _check(isinstance(self.body, bytes), "Request: body must be bytes")
        _check_headers(self.headers, "Request")
        _check(self.identity is None or isinstance(self.identity, dict), "Request: identity must be a map")


@dataclass(frozen=True, slots=True)
class Response:
    """A whole HTTP response."""

    KIND: ClassVar[int] = 3
    id: int
    status: int
    headers: Headers
    body: bytes

    def __post_init__(self) -> None:
        _check_id(self.id, "Response")
        _check(type(self.status) is int and 100 <= self.status <= 599, "Response: bad status")
        _check_headers(self.headers, "Response")
        _check(isinstance(self.body, bytes), "Response: body must be bytes")


@dataclass(frozen=True, slots=True)
class StreamStart:
    """The head of a streamed response; chunks follow until StreamEnd. `size` is the body's length
    when it is known (a whole answer sent in pieces: exactly that many bytes follow), None for an
    open-ended stream (Server-Sent Events)."""

    KIND: ClassVar[int] = 4
    id: int
    status: int
    headers: Headers
    size: int | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "StreamStart")
        _check(type(self.status) is int and 100 <= self.status <= 599, "StreamStart: bad status")
        _check_headers(self.headers, "StreamStart")
        _check(self.size is None or (type(self.size) is int and 0 <= self.size < 2**63), "StreamStart: bad size")


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """A piece of a streamed response body."""

    KIND: ClassVar[int] = 5
    id: int
    data: bytes

    def __post_init__(self) -> None:
        _check_id(self.id, "StreamChunk")
        _check(isinstance(self.data, bytes), "StreamChunk: data must be bytes")


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The end of a streamed response."""

    KIND: ClassVar[int] = 6
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id, "StreamEnd")


@dataclass(frozen=True, slots=True)
class Error:
    """A request failed in a way the worker could not express as an HTTP response of its own."""

    KIND: ClassVar[int] = 7
    id: int
    code: str
    message: str

    def __post_init__(self) -> None:
        _check_id(self.id, "Error")
        _check(isinstance(self.code, str) and isinstance(self.message, str), "Error: code and message must be strings")


@dataclass(frozen=True, slots=True)
class Cancel:
    """The gateway no longer wants the answer to request `id` (its client went away)."""

    KIND: ClassVar[int] = 8
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id, "Cancel")


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The gateway asks the worker to finish what is in flight and exit."""

    KIND: ClassVar[int] = 9


@dataclass(frozen=True, slots=True)
class Closing:
    """The worker is going away (`reason`: 'idle' or 'shutdown'): send it no new requests."""

    KIND: ClassVar[int] = 10
    reason: str

    def __post_init__(self) -> None:
        _check(isinstance(self.reason, str), "Closing: reason must be a string")


@dataclass(frozen=True, slots=True)
class Credit:
    """The gateway has passed `size` more bytes of stream `id` on to its client: the worker may send
    that much more (see STREAM_WINDOW)."""

    KIND: ClassVar[int] = 12
    id: int
    size: int

    def __post_init__(self) -> None:
        _check_id(self.id, "Credit")
        _check(type(self.size) is int and 0 <= self.size < 2**63, "Credit: size must be a non-negative int")


@dataclass(frozen=True, slots=True)
class Notice:
    """Worker to gateway: something the gateway enforces changed (`topic` 'settings': the cenv's
    rate limit...; 'pages': public pages to answer without a hop, `data` a PagePush; 'session': the
    session of request `data["id"]` is live, so the gateway may keep its token as verified)."""

    KIND: ClassVar[int] = 11
    topic: str
    data: dict[str, Any]

    def __post_init__(self) -> None:
        _check(isinstance(self.topic, str) and isinstance(self.data, dict), "Notice: topic and data")


def _headers_of(raw: Any) -> Headers:
    _check_headers(raw, "PushedPage")
    return [(k, v) for k, v in raw]


@dataclass(frozen=True, slots=True)
class PushedPage:
    """A public page as its worker answers it: a gateway answers a GET or HEAD of `path` with
    status 200, `headers` (and the body's length) and `body`; one whose If-None-Match matches
    `etag` with 304 and `headers_304`."""

    path: str
    etag: str
    body: bytes
    headers: Headers
    headers_304: Headers

    def __post_init__(self) -> None:
        _check(isinstance(self.path, str) and isinstance(self.etag, str), "PushedPage: path and etag must be strings")
        _check(isinstance(self.body, bytes), "PushedPage: body must be bytes")
        _check_headers(self.headers, "PushedPage")
        _check_headers(self.headers_304, "PushedPage")


@dataclass(frozen=True, slots=True)
class PagePush:
    """The data of a 'pages' Notice: the public pages a worker wants its gateways to answer
    themselves (wce.worker.server pushes them after each commit, before the answer that caused it;
    wce.gateway.client keeps them). `reset`: forget the cenv's pages first (a new connection's
    first push, which may come in several Notices, the later ones without reset); `dropped`: paths
    no longer to answer; `pages`: pages new or changed, whole.

    On the wire, in the Notice's map: `{"reset": bool, "pages": [{"path", "drop": true}, ...,
    {"path", "etag", "body", "headers", "headers_304"}, ...]}`, the dropped paths first.
    """

    TOPIC: ClassVar[str] = "pages"
    reset: bool = False
    dropped: tuple[str, ...] = ()
    pages: tuple[PushedPage, ...] = ()

    def notice(self) -> Notice:
        """The Notice that carries it."""
        entries: list[dict[str, Any]] = [{"path": path, "drop": True} for path in self.dropped]
        entries += [{"path": p.path, "etag": p.etag, "body": p.body, "headers": p.headers, "headers_304": p.headers_304}
                    for p in self.pages]
        return Notice(self.TOPIC, {"reset": self.reset, "pages": entries})

    @classmethod
    def of(cls, data: dict[str, Any]) -> PagePush:
        """From a 'pages' Notice's data. An entry that is not one is skipped: the worker still
        answers that path."""
        dropped: list[str] = []
        pages: list[PushedPage] = []
        entries = data.get("pages", ())
        for e in entries if isinstance(entries, list) else ():
            try:
                if not isinstance(e.get("path"), str):
                    continue
                if e.get("drop"):
                    dropped.append(e["path"])
                else:
                    pages.append(PushedPage(e["path"], e["etag"], e["body"], _headers_of(e["headers"]),
                                            _headers_of(e["headers_304"])))
            except (AttributeError, KeyError, DecodeError):
                continue
        return cls(bool(data.get("reset")), tuple(dropped), tuple(pages))


Message = (Hello | Request | Response | StreamStart | StreamChunk | StreamEnd | Error | Cancel | Shutdown | Closing | Notice
           | Credit)

KINDS: dict[int, type[Message]] = {
    cls.KIND: cls  # type: ignore[misc]
    for cls in (Hello, Request, Response, StreamStart, StreamChunk, StreamEnd, Error, Cancel, Shutdown, Closing, Notice,
                Credit)
}
