"""The worker's route table: each route declared once, and what is derived from it.

A `Route` says which method and path it answers, who may call it, what it takes and answers, and
which errors it gives. Derived from the table: dispatch (`Router`: 404 for a path no route has, 405
with `Allow` for a method a path lacks), the access check made before a handler runs (`admit`),
and the OpenAPI operations a caller may use (`paths_for`), which wce.core.openapi puts beside the
parts built from the cenv's own data (its tables, endpoints and pages).

Access, who may call a route:

    public     anyone, signed in or not
    user       a signed-in user; 401 otherwise (checked before the handler runs)
    admin      an admin; 401 anonymous, 403 anyone else (checked before the handler runs)
    grant      the table's grants and row policies, checked by the handler (rows, events)
    page       the page's own access level (display mode)
    endpoint   the endpoint's own access level (`/fn/...`)

A route documented from the cenv's data names that part in `per` ("tables", "endpoints" or
"pages") instead of carrying its own operation: OpenAPI has it once per table, endpoint or page.

Paths: `{name}` stands for one non-empty segment. A mount answers its path and every path below it:
`/fn` (any method) for the endpoints; `/`, for GET and HEAD, is the pages' display mode and takes
only what no other route claims. A GET route answers HEAD too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from wce.core.errors import BadRequest, Forbidden, NotFound, Unauthenticated, WceError
from wce.responses import JSON, status_for

from .http import Call, Handler, method_not_allowed

Access = Literal["public", "user", "admin", "grant", "page", "endpoint"]
Schema = dict[str, Any]

ANY_OBJECT: Schema = {"type": "object"}
# path parameters by name: an integer id; anything else a string (a table, a template's name...)
PATH_PARAMS: dict[str, Schema] = {"id": {"type": "integer"}}


def ref(name: str) -> Schema:
    """A reference to a schema of the document's components (`Error`, `User`, `row_TABLE`)."""
    return {"$ref": f"#/components/schemas/{name}"}


def listing(key: str, item: Schema = ANY_OBJECT, **more: Schema) -> Schema:
    """`{key: [item, ...], ...more}`, every key required."""
    return {"type": "object", "required": [key, *more], "properties": {key: {"type": "array", "items": item}, **more}}


def paging(maximum: int) -> tuple[Schema, ...]:
    """The query parameters of a newest-first listing (Call.paging)."""
    return ({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": maximum}},
            {"name": "before", "in": "query", "schema": {"type": "integer"}})


@dataclass(frozen=True, slots=True)
class Route:
    """One route: dispatch, access and documentation (see the module docstring)."""

    method: str  # "*" (a mount only): any method
    path: str
    handler: Handler
    access: Access
    summary: str
    op: str = ""  # the OpenAPI operationId; the handler's name by default
    body: Schema | None = None  # the JSON request body
    body_required: bool = True
    ok: tuple[int, ...] = (200,)  # the success statuses
    answer: Schema | None = None  # the success answer's schema (none: no body, or not JSON-described)
    media: str = JSON  # the success answer's content type
    query: tuple[Schema, ...] = ()  # query parameters, as OpenAPI parameter objects
    errors: tuple[type[WceError], ...] = ()  # besides those its access, path and body imply
    per: Literal["tables", "endpoints", "pages"] | None = None
    mount: bool = False

    def admit(self, call: Call) -> None:
        """The access check made before the handler: 401/403 for a `user` or `admin` route."""
        if self.access == "admin":
            call.require_admin()
        elif self.access == "user":
            call.require_user()

    def operation(self) -> Schema:
        """The OpenAPI operation object of this route."""
        op: Schema = {"operationId": self.op or self.handler.__name__, "summary": self.summary}
        params = [{"name": seg[1:-1], "in": "path", "required": True,
                   "schema": PATH_PARAMS.get(seg[1:-1], {"type": "string"})}
                  for seg in self.path.split("/") if seg.startswith("{")]
        if params or self.query:
            op["parameters"] = [*params, *self.query]
        if self.body is not None:
            op["requestBody"] = {"required": self.body_required, "content": {JSON: {"schema": self.body}}}
        responses: Schema = {}
        for status in self.ok:
            responses[str(status)] = {"description": "success"}
            if status != 204:
                responses[str(status)]["content"] = {self.media: {"schema": self.answer or {}}}
        for error in self.implied_errors():
            got = responses.setdefault(str(status_for(error.code)), {
                "description": "", "content": {JSON: {"schema": ref("Error")}}})
            got["description"] = f"{got['description']} or {error.code}" if got["description"] else error.code
        responses["default"] = {"description": "an error", "content": {JSON: {"schema": ref("Error")}}}
        op["responses"] = responses
        return op

    def implied_errors(self) -> list[type[WceError]]:
        """The errors this route declares: those of its access, its path, its body, and its own."""
        out: list[type[WceError]] = []
        if self.access in ("user", "admin"):
            out.append(Unauthenticated)
        if self.access == "admin":
            out.append(Forbidden)
        if "{" in self.path:
            out.append(NotFound)
        if self.body is not None:
            out.append(BadRequest)
        return [*out, *(e for e in self.errors if e not in out)]


def paths_for(routes: Iterable[Route], admin: bool) -> dict[str, Any]:
    """The OpenAPI paths of the routes documented by their own operation, as a caller sees them:
    the admin routes only for an admin."""
    paths: dict[str, Any] = {}
    for r in routes:
        if r.per is None and (admin or r.access != "admin"):
            paths.setdefault(r.path, {})[r.method.lower()] = r.operation()
    return paths


class Router:
    """Dispatch by method and path over a route table: mounts under a prefix first, then exact
    paths, then patterns with `{name}` segments in table order, then the root mount (GET/HEAD)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._mounts: list[tuple[str, str, Route]] = []
        self._root: Route | None = None
        self._exact: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[tuple[str, ...], dict[str, Route]]] = []
        seen: set[tuple[str, str, bool]] = set()
        for r in self.routes:
            if (r.method, r.path, r.mount) in seen:
                raise ValueError(f"{r.method} {r.path} is declared twice")
            seen.add((r.method, r.path, r.mount))
            self._add(r)

    def _add(self, r: Route) -> None:
        if r.mount:
            if r.path == "/":
                self._root = r
            else:
                self._mounts.append((r.path, r.path + "/", r))
        elif "{" not in r.path:
            self._exact.setdefault(r.path, {})[r.method] = r
        else:
            parts = tuple(r.path.strip("/").split("/"))
            for existing, methods in self._patterns:
                if existing == parts:
                    methods[r.method] = r
                    return
            self._patterns.append((parts, {r.method: r}))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route of a request and its path parameters, or NotFound / MethodNotAllowed."""
        for prefix, below, mounted in self._mounts:
            if path == prefix or path.startswith(below):
                return mounted, {}
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
            if self._root is not None and method in ("GET", "HEAD"):
                return self._root, {}
            raise NotFound("no such route")
        route = methods.get(method)
        if route is None:
            if method == "HEAD" and "GET" in methods:
                return methods["GET"], params
            raise method_not_allowed(method, methods)
        return route, params


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
