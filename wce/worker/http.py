"""What a worker handler sees of a request, and what it answers: small and HTTP-shaped."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from wce import proto
from wce.core.accounts import User
from wce.core.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, Unauthenticated, WceError
from wce.core.rows import parse_int
from wce.responses import JSON, error_answer, json_bytes, same_origin

from .tenant import Tenant

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class Reply:
    """An HTTP answer."""

    status: int = 200
    headers: Headers = field(default_factory=list)
    body: bytes = b""


class Stream(Protocol):
    """A streamed body (Server-Sent Events): its chunks, and a `close` the server always calls."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece; ends when the stream is over."""
        ...

    def close(self) -> None:
        """Release what the stream holds; called however it ends (finished, cancelled, never started)."""
        ...


@dataclass(slots=True)
class StreamReply:
    """An HTTP answer whose body is streamed: sent as StreamStart, StreamChunk*, StreamEnd."""

    status: int
    headers: Headers
    stream: Stream


def json_reply(value: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """A JSON answer, never cached by browsers or proxies."""
    return Reply(status, [("content-type", JSON), ("cache-control", "no-store"), *headers], json_bytes(value))


def error_reply(exc: WceError) -> Reply:
    """The answer to an error (wce.responses.error_answer, as the gateway answers its own)."""
    return Reply(*error_answer(exc))


@dataclass(slots=True)
class Call:
    """One request inside the worker: the message, its tenant and the identified user (or None)."""

    tenant: Tenant
    req: proto.Request
    user: User | None
    params: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The first value of a header (name in lowercase)."""
        for k, v in self.req.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        """The body parsed as JSON; 400 if it is not."""
        try:
            return json.loads(self.req.body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("body must be valid JSON") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; 400 otherwise."""
        value = self.json()
        if not isinstance(value, dict):
            raise BadRequest("body must be a JSON object")
        return value

    def require_user(self) -> User:
        """The signed-in user, or 401."""
        if self.user is None:
            raise Unauthenticated("sign in first")
        return self.user

    def require_admin(self) -> User:
        """The admin calling, or 401 (anonymous) / 403 (anyone else)."""
        if self.user is None:
            raise Unauthenticated("sign in as an admin")
        if self.user.role != "admin":
            raise Forbidden("admins only")
        return self.user

    def paging(self, maximum: int, default: int = 50) -> tuple[int, int | None]:
        """`?limit=&before=` of a newest-first listing, range-checked (400 otherwise)."""
        args = dict(parse_qsl(self.req.query, keep_blank_values=True))
        limit = parse_int(args["limit"], BadRequest(f"limit must be an integer from 1 to {maximum}"),
                          lo=1, hi=maximum) if "limit" in args else default
        before = parse_int(args["before"], BadRequest("before must be a 64-bit integer")) if "before" in args else None
        return limit, before

    @property
    def client(self) -> str:
        """The caller's address as the gateway saw it."""
        return self.req.client

    @property
    def root(self) -> str:
        """The cenv's root path in its URLs: `/{cenv}` in path mode, empty on its own host."""
        return "" if self.tenant.config.cenv_domain else f"/{self.tenant.cenv_id}"

    @property
    def same_origin(self) -> bool:
        """Whether a browser sent this from a page of the cenv's own origin (or it came from no
        page at all): see wce.responses.same_origin."""
        return same_origin(self.header("sec-fetch-site"), self.header("origin"), self.header("host"))


Handler = Callable[[Call], Awaitable[Reply | StreamReply]]


class Router:
    """Routes by method and path: exact paths first, then patterns with `{name}` segments in the
    order they were added. Unknown path 404; known path with another method 405."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[tuple[str, ...], dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Register a handler; `{name}` segments match one non-empty path segment."""
        if "{" not in path:
            self._exact.setdefault(path, {})[method] = handler
            return
        parts = tuple(path.strip("/").split("/"))
        for existing, methods in self._patterns:
            if existing == parts:
                methods[method] = handler
                return
        self._patterns.append((parts, {method: handler}))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler for a request and its path parameters, or NotFound / MethodNotAllowed."""
        methods = self._exact.get(path)
        params: dict[str, str] = {}
        if methods is None:
            segs = path.strip("/").split("/")
            for parts, candidate in self._patterns:
                if len(parts) == len(segs):
                    got = _bind(parts, segs)
                    if got is not None:
                        methods, params = candidate, got
                        break
        if methods is None:
            raise NotFound("no such route")
        handler = methods.get(method)
        if handler is None:
            if method == "HEAD" and "GET" in methods:
                return methods["GET"], params
            allow = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})
            raise MethodNotAllowed(f"{method} is not allowed here; use {', '.join(sorted(methods))}", allow)
        return handler, params


def _bind(parts: tuple[str, ...], segs: list[str]) -> dict[str, str] | None:
    """Path parameters if segs fit the pattern (the gateway passes the path already decoded)."""
    params: dict[str, str] = {}
    for p, s in zip(parts, segs, strict=True):
        if p.startswith("{") and p.endswith("}"):
            if not s:
                return None
            params[p[1:-1]] = s
        elif p != s:
            return None
    return params
