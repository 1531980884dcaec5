"""HTTP answers shared by the gateway and the worker (both answer HTTP): the one table of error
codes, the one function that turns any error into an HTTP answer, JSON bytes, and the session
cookie and origin rules.

Stdlib and wce.core.errors only.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from wce.core.errors import (
    BadRequest, Conflict, Forbidden, Invalid, InvalidCredentials, MethodNotAllowed, NotFound, RateLimited,
    ScriptError, Timeout, TooLarge, Unauthenticated, Unavailable, WceError,
)

STATUS: dict[type[WceError], int] = {
    BadRequest: 400,
    Unauthenticated: 401,
    InvalidCredentials: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    TooLarge: 413,
    Invalid: 422,
    RateLimited: 429,
    WceError: 500,  # "internal"
    ScriptError: 500,
    Unavailable: 503,
    Timeout: 504,
}
"""The one table of error codes: each error class (its `code`, wce.core.errors) and its HTTP status."""

BY_CODE: dict[str, type[WceError]] = {cls.code: cls for cls in STATUS}
STATUS_BY_CODE: dict[str, int] = {cls.code: status for cls, status in STATUS.items()}

JSON = "application/json"
Headers = list[tuple[str, str]]


def status_for(code: str) -> int:
    """The HTTP status of an error code (500 for an unknown one)."""
    return STATUS_BY_CODE.get(code, 500)


def error_from(code: str, message: str) -> WceError:
    """The error a peer (a worker, the fork server) named by its code, to answer as if raised here."""
    return BY_CODE.get(code, WceError)(message)


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_answer(exc: BaseException, close: bool = False) -> tuple[int, Headers, bytes]:
    """The HTTP answer to any error: its status, headers and the contract's body
    `{"error": {"code", "message"}}`. Every error answer of the gateway and the worker is made here.

    A WceError answers with its code's status and its public message, with `Retry-After` for a
    RateLimited and `Allow` for a MethodNotAllowed that lists methods. Anything else is a bug of
    ours: 500 `internal`, "internal error", nothing of it shown (log it before). `close` adds
    `Connection: close`: for an answer sent before the request's body was read to its end, whose
    rest must never be taken for the next request.
    """
    if not isinstance(exc, WceError):
        exc = WceError()
    headers: Headers = [("content-type", JSON), ("cache-control", "no-store")]
    if isinstance(exc, RateLimited):
        headers.append(("retry-after", str(exc.retry_after)))
    if isinstance(exc, MethodNotAllowed) and exc.allow:
        headers.append(("allow", ", ".join(exc.allow)))
    if close:
        headers.append(("connection", "close"))
    return status_for(exc.code), headers, json_bytes({"error": {"code": exc.code, "message": exc.message}})


SESSION_COOKIE = "wce_session"  # set by the worker at login, read by the gateway on every request


def session_cookie(subdomains: bool, https: bool) -> str:
    """The session cookie's name. A cenv on its own host over https uses `__Host-`: browsers take
    such a cookie only host-only, `Secure` and `Path=/`, so a sibling subdomain (another tenant)
    cannot plant one. In path mode cookies are scoped by `Path` (which is no security boundary:
    path mode relies on the sandbox of tenant content instead), and `__Host-` needs `Path=/`."""
    return "__Host-" + SESSION_COOKIE if subdomains and https else SESSION_COOKIE


def same_origin(site: str | None, origin: str | None, host: str | None) -> bool:
    """Whether a browser says the request comes from a page of the request's own origin, or from no
    page (a typed address, a bookmark) or from no browser at all.

    `site` is `Sec-Fetch-Site` (trusted when present: every current browser sends it), else `Origin`
    is compared with `Host`. `same-site` is not same-origin: sibling subdomains are same-site, and
    in subdomain mode each is another tenant. A sandboxed page's origin is opaque (`null`).
    """
    if site is not None:
        return site in ("same-origin", "none")
    if origin is None:
        return True
    return origin != "null" and host is not None and urlsplit(origin.lower()).netloc == host.lower()


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match semantics (weak comparison, `*`): the one rule for the worker's page answers
    and the gateway's fast path, so both give the same 304s."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)
