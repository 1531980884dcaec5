"""What a worker handler sees of a request, and what it answers: small and HTTP-shaped."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from wce import proto
from wce.core.accounts import User
from wce.core.errors import BadRequest, Forbidden, MethodNotAllowed, Unauthenticated, WceError
from wce.core.permissions import Actor
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


def no_content(*headers: tuple[str, str]) -> Reply:
    """204: done, nothing to answer."""
    return Reply(204, [("cache-control", "no-store"), *headers])


def method_not_allowed(method: str, methods: Iterable[str]) -> MethodNotAllowed:
    """405 for a method a path does not have; `Allow` lists those it has (HEAD wherever GET is)."""
    have = sorted(set(methods))
    allow = sorted({*have, *(["HEAD"] if "GET" in have else [])})
    return MethodNotAllowed(f"{method} is not allowed here; use {', '.join(have)}", allow)


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

    def require(self, access: str, anonymous: str, others: str = "admins only") -> User | None:
        """The caller, if `access` ("public", "user" or "admin") lets them in: else 401 with the
        message `anonymous` for an anonymous caller, 403 with `others` for a signed-in non-admin."""
        user = self.user
        if access == "public":
            return user
        if user is None:
            raise Unauthenticated(anonymous)
        if access == "admin" and user.role != "admin":
            raise Forbidden(others)
        return user

    def require_user(self) -> User:
        """The signed-in user, or 401."""
        user = self.require("user", "sign in first")
        assert user is not None
        return user

    def require_admin(self) -> User:
        """The admin calling, or 401 (anonymous) / 403 (anyone else)."""
        user = self.require("admin", "sign in as an admin")
        assert user is not None
        return user

    @property
    def actor(self) -> Actor:
        """The caller for permission decisions."""
        u = self.user
        return Actor(u.id, u.username, u.role) if u else Actor.anon()

    @property
    def username(self) -> str:
        """The signed-in caller's name, as audit rows name their actor (401 if anonymous: for
        the handlers of routes whose access already let only signed-in callers in)."""
        return self.require_user().username

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
