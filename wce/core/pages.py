"""Pages: the stored "edit mode" of a cenv's Mustache pages, its validation and its storage.

A page is a path, a Mustache template, named read-only SQL queries, an access level, a content
type and an optional Starlark `context` script. Rendering lives in `pages_render` and caching in
the worker's render cache; this module only knows what a valid page is and how it is stored.
Every change writes its audit row in the same transaction.

`context` is Starlark defining `context(ctx)`: the worker compiles it when the page is saved
(422 with line and column if it does not) and `pages_render.render_page` runs it at every render,
so a page never renders without the data its author expected.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import apsw

from . import audit, mustache
from .db import transaction
from .errors import BadRequest, Conflict, Invalid, NotFound

ACCESS_LEVELS = ("public", "user", "admin")
RESERVED_PREFIXES = ("/api", "/auth", "/fn", "/_")
MAX_TEMPLATE = 256 * 1024
MAX_QUERIES = 20
MAX_QUERY = 20_000
RESERVED_NAMES = frozenset({"values", "page"})

_PATH = re.compile(r"^/(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*)?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*"
                           r"(?:\s*;\s*[a-z0-9_-]+=[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True, slots=True)
class PageSpec:
    """A page as submitted, validated (no id yet)."""

    path: str
    template: str
    queries: dict[str, str]
    context: str | None
    access: str
    content_type: str


@dataclass(frozen=True, slots=True)
class Page:
    """A stored page."""

    id: int
    path: str
    template: str
    queries: dict[str, str]
    context: str | None
    access: str
    content_type: str
    updated_at: float

    def public(self) -> dict[str, Any]:
        """The edit-mode JSON shape (without render status, which the cache adds)."""
        return {"id": self.id, "path": self.path, "template": self.template, "queries": dict(self.queries),
                "context": self.context, "access": self.access, "content_type": self.content_type,
                "updated_at": self.updated_at}


def check_path(path: object) -> str:
    """A display path: `/` or `/a/b-c.html`; no `.`/`..` segments, no trailing slash, no reserved prefix."""
    if not isinstance(path, str) or not path:
        raise BadRequest("'path' must be a non-empty string")
    if len(path) > 256 or not _PATH.match(path) or any(seg in (".", "..") for seg in path.split("/")):
        raise Invalid("'path' must start with '/' and hold only letters, digits and . _ ~ - between single '/'")
    lowered = path.lower()
    for prefix in RESERVED_PREFIXES:
        if lowered == prefix or lowered.startswith(prefix + "/"):
            raise Invalid(f"paths under {prefix}/ are reserved")
    return path


def parse_page(body: dict[str, Any]) -> PageSpec:
    """Validate a page body (the full edit mode; optional fields take their defaults)."""
    path = check_path(body.get("path"))
    template = body.get("template")
    if not isinstance(template, str):
        raise BadRequest("'template' must be a string")
    if len(template.encode()) > MAX_TEMPLATE:
        raise Invalid(f"'template' is limited to {MAX_TEMPLATE} bytes")
    check_template(template, "template")
    queries = body.get("queries", {})
    if queries is None:
        queries = {}
    if not isinstance(queries, dict) or not all(isinstance(v, str) for v in queries.values()):
        raise BadRequest("'queries' must be an object of name: SQL string")
    if len(queries) > MAX_QUERIES:
        raise Invalid(f"a page may have at most {MAX_QUERIES} queries")
    for name, sql in queries.items():
        if not _NAME.match(name) or name in RESERVED_NAMES:
            raise Invalid(f"query name {name!r} must be an identifier other than 'values' and 'page'")
        if not sql.strip() or len(sql) > MAX_QUERY:
            raise Invalid(f"query '{name}' must be non-empty and at most {MAX_QUERY} characters")
    context = body.get("context")
    if context is not None:
        if not isinstance(context, str):
            raise BadRequest("'context' must be a string or null")
        if not context.strip():
            context = None
    access = body.get("access", "public")
    if access not in ACCESS_LEVELS:
        raise Invalid("'access' must be 'public', 'user' or 'admin'")
    content_type = body.get("content_type", "text/html")
    if not isinstance(content_type, str) or len(content_type) > 100 or not _CONTENT_TYPE.match(content_type):
        raise Invalid("'content_type' must be a media type such as 'text/html'")
    return PageSpec(path, template, dict(queries), context, access, content_type)


def check_template(source: str, what: str) -> None:
    """Refuse Mustache that does not parse (422 with line and column)."""
    try:
        mustache.compile_template(source)
    except mustache.TemplateError as exc:
        raise Invalid(f"{what}: {exc}") from None


_COLUMNS = "id, path, template, queries, context, access, content_type, updated_at"


def _page(row: tuple[Any, ...]) -> Page:
    return Page(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], row[7])


def list_pages(conn: apsw.Connection) -> list[Page]:
    """Every page, by path."""
    return [_page(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM _wce_pages ORDER BY path")]


def get_page(conn: apsw.Connection, page_id: int) -> Page:
    """One page, or NotFound."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM _wce_pages WHERE id = ?", (page_id,)).fetchone()
    if row is None:
        raise NotFound("no such page")
    return _page(row)


def _values(spec: PageSpec, now: float) -> tuple[Any, ...]:
    return (spec.path, spec.template, json.dumps(spec.queries), spec.context, spec.access, spec.content_type, now)


def create_page(conn: apsw.Connection, spec: PageSpec, *, actor: str | None, ip: str | None) -> Page:
    """Store a new page; Conflict if its path is taken."""
    try:
        with transaction(conn):
            conn.execute("INSERT INTO _wce_pages(path, template, queries, context, access, content_type, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", _values(spec, time.time()))
            page_id = conn.last_insert_rowid()
            audit.record(conn, "page.create", actor=actor, target=str(page_id), detail={"path": spec.path}, ip=ip)
    except apsw.ConstraintError:
        raise Conflict(f"a page already has the path {spec.path}") from None
    return get_page(conn, page_id)


def replace_page(conn: apsw.Connection, page_id: int, spec: PageSpec, *, actor: str | None, ip: str | None) -> Page:
    """Replace a page's edit mode; NotFound or Conflict (path taken by another page)."""
    try:
        with transaction(conn):
            conn.execute("UPDATE _wce_pages SET path = ?, template = ?, queries = ?, context = ?, access = ?,"
                         " content_type = ?, updated_at = ? WHERE id = ?", (*_values(spec, time.time()), page_id))
            if conn.changes() == 0:
                raise NotFound("no such page")
            audit.record(conn, "page.update", actor=actor, target=str(page_id), detail={"path": spec.path}, ip=ip)
    except apsw.ConstraintError:
        raise Conflict(f"a page already has the path {spec.path}") from None
    return get_page(conn, page_id)


def delete_page(conn: apsw.Connection, page_id: int, *, actor: str | None, ip: str | None) -> None:
    """Delete a page (its cached output goes with it)."""
    with transaction(conn):
        row = conn.execute("SELECT path FROM _wce_pages WHERE id = ?", (page_id,)).fetchone()
        if row is None:
            raise NotFound("no such page")
        conn.execute("DELETE FROM _wce_pages WHERE id = ?", (page_id,))
        audit.record(conn, "page.delete", actor=actor, target=str(page_id), detail={"path": row[0]}, ip=ip)
