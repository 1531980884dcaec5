"""Rendering a page, and recording exactly what the output depends on.

A page is rendered once for every caller (the worker caches the output and re-renders it after
the commits that matter), so it renders with the reach of a *role*, never of a person:

    access   rendered with the grants of   served to
    public   anon                           anyone
    user     user                           any signed-in caller (401 otherwise)
    admin    admin (every tenant table)     admins (401 anonymous, 403 others)

A public page can therefore only show what an anonymous caller could select through the data API
anyway: the safer rule, so that a public page never publishes a table its author forgot was
private. A table on which that role has a select row policy cannot be read by such a page: the
policy depends on who asks (`:user_id`), and one rendering serves everyone. Queries run in the
SQL guard's READ mode, so no `_wce_` table, no write, no PRAGMA.

Each render records its dependencies: the tables its queries read (through views too, from
`sqlguard.tables_read`), the templates it asked for (found or not, so creating a missing partial
re-renders the page), and the value keys it looked up.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from . import mustache, sqlguard
from .errors import Forbidden, Invalid, WceError
from .pages import Page, PageSpec

if TYPE_CHECKING:
    from .permissions import Access

RENDER_ROLE = {"public": "anon", "user": "user", "admin": "admin"}
MAX_OUTPUT = 4 * 1024 * 1024  # characters of rendered output
QUERY_BUDGET = 2.0  # seconds for all the queries of one render
_PROGRESS_ID = "wce.pages_render"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One render: the output (or the error) and what it depended on.

    The dependencies are kept even for a failed render, so that the commit that fixes the cause
    (a row with bad data, a missing partial) triggers the next attempt. `denied` is True when the
    render failed because the page's role may no longer read a table: the cache then drops the
    last good output instead of serving it (it was rendered under grants that are gone).
    """

    body: bytes | None
    etag: str | None
    error: str | None
    denied: bool
    read_tables: frozenset[str]
    partials: frozenset[str]
    value_keys: frozenset[str]


def table_filter(access: Access, role: str, tables: frozenset[str]) -> tuple[Callable[[str, str], bool] | None, str]:
    """Which of the tables a query reads a page rendered for role may read, and a cache scope.

    Decided before the query is prepared: the filter runs inside SQLite's authorizer, where the
    connection must not be used (compiling a rule reads `_wce_table_permissions`). A table the
    query turns out to read that was not foreseen is refused. The authorizer only runs when a
    statement is prepared, and prepared statements are cached by their text, so the scope names
    the allowed set: after a grant changes, the statement is prepared (and authorized) afresh.
    Admin pages read every tenant table (filter None).
    """
    if role == "admin":
        return None, "page:admin"
    ok = set()
    for table in tables:
        rule = access.rule(role, table, "select")
        if rule.granted and rule.using is None:
            ok.add(table.lower())
    digest = hashlib.blake2b("\0".join(sorted(ok)).encode(), digest_size=6).hexdigest()
    return (lambda table, action: table.lower() in ok), f"page:{role}:{digest}"


def _tables_read(guard: sqlguard.Guard, sql: str, read_sets: dict[str, frozenset[str]] | None) -> frozenset[str]:
    tables = read_sets.get(sql) if read_sets is not None else None
    if tables is None:
        try:
            tables = sqlguard.tables_read(guard.conn, sql)
        except apsw.Error:
            return frozenset()  # it will not run either; sqlguard says why
        if read_sets is not None:
            read_sets[sql] = tables
    return tables


def check_queries(guard: sqlguard.Guard, access: Access, spec: PageSpec) -> None:
    """Save-time check: each query prepares under READ with the page's role (422 otherwise)."""
    role = RENDER_ROLE[spec.access]
    for name, sql in spec.queries.items():
        try:
            filt, scope = table_filter(access, role, _tables_read(guard, sql, None))
            sqlguard.check(guard, sqlguard.Mode.READ, sql, scope=f"{scope}:check", table_filter=filt)
        except WceError as exc:
            hint = "" if role == "admin" else f" (a {spec.access} page reads with the grants of the role '{role}')"
            raise Invalid(f"query '{name}': {exc.message}{hint}") from None


class _Values(dict[str, Any]):
    """The `values` of the render context, noting which keys the template looks up.

    The Mustache engine reads a dict only through `.get` (wce.core.mustache._child), and a dict is
    truthy even when empty, so the keys looked up are exactly what the output depends on.
    """

    __slots__ = ("seen",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self.seen: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)


ContextRunner = Callable[[Page, str], tuple[dict[str, Any], frozenset[str]]]
"""Runs a page's Starlark `context(ctx)` with a role's reach: (what it returned, tables it read)."""


def render_page(guard: sqlguard.Guard, access: Access, page: Page, templates: Mapping[str, str],
                values: Mapping[str, Any], read_sets: dict[str, frozenset[str]] | None = None,
                budget: float = QUERY_BUDGET, run_context: ContextRunner | None = None) -> Outcome:
    """Run the page's queries and its template; never raises for the page's own faults.

    `read_sets` caches the tables each query text reads (finding them prepares the query once
    more), so the caller keeps the answers until the schema changes (a view may be redefined) and
    then passes a fresh dict. The queries get
    `budget` seconds in all: renders run on the worker's only thread (and again at every start
    after a crash), so an endless query must become a render error, not a stuck worker.
    """
    role = RENDER_ROLE[page.access]
    read: set[str] = set()
    used: set[str] = set()
    vals = _Values(values)

    def outcome(body: bytes | None, etag: str | None, error: str | None, denied: bool = False) -> Outcome:
        return Outcome(body, etag, error, denied, frozenset(read), frozenset(used), frozenset(vals.seen))

    context: dict[str, Any] = {}
    deadline = time.monotonic() + budget
    guard.conn.set_progress_handler(lambda: time.monotonic() > deadline, 20_000, id=_PROGRESS_ID)
    try:
        for name, sql in page.queries.items():
            tables = _tables_read(guard, sql, read_sets)
            read.update(tables)
            try:
                filt, scope = table_filter(access, role, tables)
                cols, rows = sqlguard.run(guard, sqlguard.Mode.READ, sql, scope=scope, table_filter=filt)
            except Forbidden as exc:
                return outcome(None, None, f"query '{name}': {exc.message}", denied=True)
            except WceError as exc:
                return outcome(None, None, f"query '{name}': {exc.message}")
            except apsw.InterruptError:
                return outcome(None, None, f"query '{name}': the page's queries ran past {budget:g} s")
            except (apsw.Error, MemoryError) as exc:  # too big, out of memory...
                return outcome(None, None, f"query '{name}' failed: {type(exc).__name__}")
            context[name] = [dict(zip(cols, row)) for row in rows]
    finally:
        guard.conn.set_progress_handler(None, id=_PROGRESS_ID)
    context["values"] = vals
    context["page"] = {"id": page.id, "path": page.path, "access": page.access,
                       "content_type": page.content_type, "updated_at": page.updated_at}
    if page.context is not None:
        if run_context is None:
            return outcome(None, None, "context: no script runtime here")
        try:
            extra, tables = run_context(page, role)
        except WceError as exc:
            read.update(getattr(exc, "read_tables", ()))
            detail = getattr(exc, "detail", exc.message)
            line = getattr(exc, "line", None)
            return outcome(None, None, f"context: {detail}" + (f" (line {line})" if line else ""),
                           denied=isinstance(exc, Forbidden))
        read.update(tables)
        context.update({k: v for k, v in extra.items() if k not in ("values", "page")})

    def partial(name: str) -> str | None:
        used.add(name)
        return templates.get(name)

    try:
        text = mustache.render(page.template, context, partial, max_output=MAX_OUTPUT)
    except (mustache.TemplateError, mustache.RenderError) as exc:
        return outcome(None, None, f"template: {exc}")
    except MemoryError:
        return outcome(None, None, "template: out of memory")
    body = text.encode("utf-8", "replace")
    digest = hashlib.blake2b(body, digest_size=12)
    digest.update(b"\0" + page.content_type.encode())
    return outcome(body, f'"{digest.hexdigest()}"', None)
