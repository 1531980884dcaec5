"""HTTP statuses of error codes, and the JSON error body: the one place the mapping lives.

Shared by the gateway and the worker (both answer HTTP); stdlib only.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "unauthenticated": 401,
    "invalid_credentials": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "too_large": 413,
    "invalid": 422,
    "rate_limited": 429,
    "internal": 500,
    "script_error": 500,
    "unavailable": 503,
    "timeout": 504,
}

JSON = "application/json"
Headers = list[tuple[str, str]]


def status_for(code: str) -> int:
    """The HTTP status of an error code (500 for an unknown one)."""
    return STATUS_BY_CODE.get(code, 500)


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(code: str, message: str) -> bytes:
    """`{"error": {"code", "message"}}` as bytes."""
    return json_bytes({"error": {"code": code, "message": message}})


def error_parts(code: str, message: str, retry_after: int | None = None) -> tuple[int, Headers, bytes]:
    """Status, headers and body of an error response."""
    headers: Headers = [("content-type", JSON), ("cache-control", "no-store")]
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return status_for(code), headers, error_body(code, message)


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
