"""The gateway's routes, declared once: the dispatcher (wce.gateway.asgi) takes from a request's
route who answers it, the request log and the metrics take its class (`name`), and a 405 its
`Allow` list. The platform app (wce.gateway.platform) registers its Quart views from the same table.

Where a request lands is decided first (wce.gateway.origins: path mode `/{cenv}/...`, subdomain mode
by host); then the table of that side names the route. Methods are listed where the gateway answers
them itself; a route with none leaves them to what answers behind it (Quart, the cenv's worker,
whose own table is wce.worker.app). HEAD is allowed wherever GET is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wce.core.errors import MethodNotAllowed

from .origins import Origins

Scope = dict[str, Any]

# who answers (asgi.Gateway has one handler for each)
APP = "app"  # the platform app (Quart-Trio), after the gateway has read the body under its limit
IMPORT = "import"  # platform.ImportRoute: its body streamed to a file under its own limit
METRICS = "metrics"  # platform.MetricsRoute: Prometheus text behind the operator's token
ASSETS = "assets"  # editor.Editor.asset: one file of the editor's bundle
EDITOR = "editor"  # editor.Editor: the shell (`/_/`), or an asset on the cenv's own host
WORKER = "worker"  # a CORS preflight, the gateway's copy of a public page, or else the cenv's worker
SLASH = "slash"  # 308 from `/{cenv}` to `/{cenv}/`
MOVED = "moved"  # subdomain mode: 308 from `D/{cenv}/...` to the cenv's own host


@dataclass(frozen=True, slots=True)
class Route:
    """One route: its class in the log and the metrics, the path it matches, who answers it, and
    the methods the gateway answers on it (empty: decided by who answers)."""

    name: str
    path: str
    via: str
    methods: tuple[str, ...] = ()
    allow: tuple[str, ...] = field(init=False)  # the 405's Allow: methods, and HEAD wherever GET

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(sorted({*self.methods, *(("HEAD",) if "GET" in self.methods else ())})))

    def check(self, method: str) -> None:
        """MethodNotAllowed, listing `allow`, unless the route takes `method`."""
        if method not in self.allow:
            raise MethodNotAllowed(f"{method} is not allowed here; use {', '.join(self.methods)}", list(self.allow))


# Outside a cenv, by path.
PLATFORM = (
    Route("landing", "/", APP, ("GET",)),
    Route("new", "/new", APP, ("GET", "POST")),
    Route("healthz", "/healthz", APP, ("GET",)),
    Route("import", "/import", IMPORT, ("POST",)),
    Route("metrics", "/metrics", METRICS, ("GET",)),
)
BUNDLE = Route("assets", "/_/assets/", ASSETS, ("GET",))  # a prefix: every file the editor's build lists
OTHER = Route("other", "", APP)  # any other path: the platform app's 404
ELSEWHERE = Route("other", "/{cenv}/...", MOVED)  # subdomain mode: a cenv's path on the platform's host

# Inside a cenv, by the first segment of the path after it.
CENV = (
    Route("_", "/_", EDITOR, ("GET",)),  # the editor: ours, served without waking the worker
    Route("auth", "/auth", WORKER),
    Route("api", "/api", WORKER),
    Route("fn", "/fn", WORKER),
    Route("events", "/events", WORKER),
)
PAGE = Route("page", "/...", WORKER)  # any other path: a page
ROOT = Route("page", "", SLASH)  # `/{cenv}` alone (path mode)

_PLATFORM = {r.path: r for r in PLATFORM}
_CENV = {r.path[1:]: r for r in CENV}


def by_name(name: str) -> Route:
    """The platform route of that name (for the handlers that answer one)."""
    return next(r for r in PLATFORM if r.name == name)


class Routes:
    """The table as one server sees it (its URL mode)."""

    __slots__ = ("origins",)

    def __init__(self, origins: Origins) -> None:
        self.origins = origins

    def match(self, scope: Scope) -> tuple[Route, str | None, str]:
        """A request's route, the cenv it is for (None: the platform) and its path (inside the
        cenv: empty or starting with '/')."""
        cenv, path, moved = self.origins.locate(scope)
        if cenv is not None:
            if not path:
                return ROOT, cenv, path
            end = path.find("/", 1)
            return _CENV.get(path[1:end] if end > 0 else path[1:], PAGE), cenv, path
        route = _PLATFORM.get(path)
        if route is None:
            route = ELSEWHERE if moved else BUNDLE if path.startswith(BUNDLE.path) else OTHER
        return route, None, path
