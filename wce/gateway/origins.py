"""Where a cenv lives in the browser, and what its answers and its cookie may do there.

Every cenv owner is a possible attacker of every other cenv (anyone may create one), and a cenv's
pages and `/fn/` answers are HTML and JavaScript its owner wrote. Two URL modes keep those bytes
from acting for a visitor on another cenv:

- **Path mode** (the default): cenv X at `/X/` on the server's one origin. Every answer of a cenv
  carries `Content-Security-Policy: sandbox` without `allow-same-origin`, so a browser runs what a
  tenant wrote in an opaque origin: its requests to any cenv carry no cookie, it cannot read their
  answers with one, and it cannot register a service worker. The editor shell is ours and the only
  page of a cenv served unsandboxed.
- **Subdomain mode** (`--cenv-domain D`): cenv X at `X.D`, its own origin with a host-only cookie;
  the platform routes stay on `D`, and `D/X/...` redirects to X's host.

In both modes every answer of a cenv says `Access-Control-Allow-Origin: *` and never
`Allow-Credentials`: a page elsewhere (a sandboxed page, a front end on a dev server) may call the
API with a Bearer token, and a browser shows it only what a request without cookies may see.

Which of the two a request is for is decided here (`Origins.locate`), before the route table
(wce.gateway.routes) picks who answers it.

The session cookie authenticates only requests from the cenv's own origin (and top-level
navigations to it): `cookie_counts`.
"""

from __future__ import annotations

from typing import Any

from wce.core.errors import Forbidden
from wce.core.ids import LENGTH, is_id
from wce.responses import SESSION_COOKIE, same_origin, session_cookie

Scope = dict[str, Any]
RawHeaders = list[tuple[bytes, bytes]]

# What a sandboxed page may still do: run scripts, submit forms, open windows (sandboxed in turn),
# alerts, downloads. Never allow-same-origin (that would give back the shared origin).
SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
CORS: RawHeaders = [(b"access-control-allow-origin", b"*"),
                    (b"access-control-expose-headers", b"etag, retry-after, location")]
PATH_MODE_HEADERS: RawHeaders = [(b"content-security-policy", SANDBOX.encode()), *CORS]
PREFLIGHT_MAX_AGE = b"600"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ID_END = 1 + LENGTH  # in a path `/{id}/...`, where the id ends


def cenv_in_path(path: str) -> tuple[str, str] | None:
    """`/{id}` or `/{id}/...` (any well-shaped id) -> (id, the rest of the path), else None."""
    rest = path[_ID_END:]
    if (not rest or rest[0] == "/") and is_id(path[1:_ID_END]):
        return path[1:_ID_END], rest
    return None


class Origins:
    """The URL mode of one server: which cenv a request is for, and its URL."""

    def __init__(self, cenv_domain: str = "") -> None:
        self.domain = cenv_domain.strip().strip(".").lower()
        self.subdomains = bool(self.domain)
        self._suffix = "." + self.domain
        # added to every answer of a cenv but the editor's own files
        self.cenv_headers: RawHeaders = list(CORS) if self.subdomains else list(PATH_MODE_HEADERS)
        self._cookies = {"http": (SESSION_COOKIE + "=").encode(),
                         "https": (session_cookie(self.subdomains, True) + "=").encode()}

    def locate(self, scope: Scope) -> tuple[str | None, str, bool]:
        """Where a request lands: `(cenv, the path inside it, False)` for a cenv's, `(None, path,
        False)` for the platform's, and in subdomain mode `(None, path, True)` for a cenv's path on
        the platform's host (`D/X/...`: X lives on its own host). The path inside a cenv is empty
        for `/X` in path mode, else it starts with '/'."""
        path: str = scope["path"]
        named = cenv_in_path(path)
        if not self.subdomains:
            return (None, path, False) if named is None else (named[0], named[1], False)
        host = self.cenv_of_host(scope["headers"])
        if host is not None:
            return host, path, False  # X.D/...: all of it is X's
        return None, path, named is not None

    def cenv_of_host(self, headers: RawHeaders) -> str | None:
        """Subdomain mode: the cenv whose host the request names (`X.D`, any port), else None."""
        for k, v in headers:
            if k == b"host":
                name = v.decode("latin-1").lower()
                if ":" in name and not name.endswith("]"):  # drop the port (a bare IPv6 literal has none)
                    name = name.rpartition(":")[0]
                if name.endswith(self._suffix):
                    label = name[: -len(self._suffix)]
                    return label if is_id(label) else None
                return None
        return None

    def cenv_url(self, scheme: str, host: str, cenv: str) -> str:
        """The address of a cenv, for a request that came to `host` (whose port it keeps)."""
        if not self.subdomains:
            return f"{scheme}://{host}/{cenv}/"
        port = ""
        if not host.endswith("]") and ":" in host:
            port = ":" + host.rpartition(":")[2]
        return f"{scheme}://{cenv}.{self.domain}{port}/"

    def cookie_name(self, scheme: str) -> bytes:
        """`name=` of the session cookie on this scheme (see wce.responses.session_cookie)."""
        return self._cookies.get(scheme, self._cookies["http"])


def cookie_counts(scope: Scope) -> bool:
    """Whether the session cookie a request carries may authenticate it.

    Only a request from the cenv's own origin (or from no page at all: a typed address, a client
    that is not a browser) is made with the cookie, and a top-level navigation to the cenv (a link
    from elsewhere to a signed-in page). Any other cross-origin request goes on as anonymous, and
    a state-changing one is refused (CSRF), whether from another site or from a sibling subdomain
    (same-site, not same-origin). A Bearer token is never sent by a browser on its own, so this
    is not asked for one.
    """
    site = origin = host = mode = dest = None
    for k, v in scope["headers"]:
        if k == b"sec-fetch-site":
            site = v.decode("latin-1").strip().lower()
        elif k == b"origin":
            origin = v.decode("latin-1").strip()
        elif k == b"host":
            host = v.decode("latin-1").strip()
        elif k == b"sec-fetch-mode":
            mode = v
        elif k == b"sec-fetch-dest":
            dest = v
    if same_origin(site, origin, host):
        return True
    if scope["method"] in UNSAFE_METHODS:
        raise Forbidden("cross-site request refused: state-changing requests signed in by cookie must come from this cenv's own pages")
    return mode == b"navigate" and dest == b"document"


def preflight_headers(scope: Scope) -> RawHeaders | None:
    """The answer to a CORS preflight (an OPTIONS with `Access-Control-Request-Method`), or None
    for any other request. Any method and request header may be used, never with credentials."""
    method = wanted = None
    for k, v in scope["headers"]:
        if k == b"access-control-request-method":
            method = v
        elif k == b"access-control-request-headers":
            wanted = v
    if method is None:
        return None
    headers: RawHeaders = [(b"access-control-allow-origin", b"*"),
                           (b"access-control-allow-methods", b"GET, HEAD, POST, PUT, PATCH, DELETE"),
                           (b"access-control-max-age", PREFLIGHT_MAX_AGE), (b"content-length", b"0")]
    if wanted:
        headers.append((b"access-control-allow-headers", wanted))
    return headers
