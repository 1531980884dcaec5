"""The render cache: every page's last good output, kept current by the event bus.

Render on write: the cache subscribes to the bus, and after each commit re-renders only the pages
the commit can have changed, then stores the results in memory (what requests are served from:
a page request never renders, but for a stale page, below) and in `_wce_render_cache` (so a new
worker serves at once):

    commit touched                      pages re-rendered
    a tenant table t                    those whose last render read t (views included)
    _wce_pages                          the pages whose row changed (a deleted page is dropped)
    _wce_templates                      those that asked for a template whose source changed
    _wce_values                         those that looked up a key whose value changed
    _wce_table_permissions / policies   every page that is not rendered with admin reach
    the schema (CREATE/DROP/ALTER)      every page

A render that fails keeps the previous output in service and records the error (shown by
`GET pages/{id}` as `render_error`), except when the page's role may no longer read a table:
output made under a revoked grant is withdrawn. Output is only served to the access level it was
rendered for (a page switched from admin to public never shows what the admin render saw).

Persistence: `_wce_render_cache.read_tables` holds the render's dependencies as JSON
(`{"tables", "partials", "values", "access", "error_at"}`). A worker that stops cleanly leaves
`_wce_meta.render_cache_clean = '1'` (and `render_cache_stale`, the pages still stale). One that
starts without it (crash, fresh import) trusts no stored output, since commits may have happened
without their re-render: every page is stale. A stale page is rendered when it is first asked
for (`entry`), in the budget of the request that asks, never at start: start-up runs before any
request's budget, and a render is tenant code (its queries and its Starlark context), so
rendering every page there would put a cenv's whole render work (pages x budget each) outside
any per-request limit, and a cenv with enough slow pages would never come up within the gateway's
hard deadline. Stale pages are not pushed to gateways until rendered.

Public entries reach the gateways through the worker (wce.worker.server.Worker.push_pages), which
compares what it last pushed with `current` after every request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from wce.core import pages_library, sqlguard
from wce.core.db import transaction
from wce.core.events import ChangeSet
from wce.core.pages import Page, list_pages
from wce.core.pages_render import ContextRunner, Outcome, render_page

if TYPE_CHECKING:
    from wce.core.permissions import Access

CLEAN_KEY = "render_cache_clean"
STALE_KEY = "render_cache_stale"  # with CLEAN_KEY: the pages a clean stop left unrendered (JSON ids)
GRANT_TABLES = frozenset({"_wce_table_permissions", "_wce_row_policies"})
_TEXTUAL = ("text/", "application/json", "application/xml", "application/javascript", "image/svg+xml")


@dataclass(frozen=True, slots=True)
class Entry:
    """A page's servable output: immutable, so it can be handed around (or shipped) as is."""

    page_id: int
    path: str
    access: str
    content_type: str  # the header value, with a charset for text
    body: bytes
    etag: str
    rendered_at: float


@dataclass(slots=True)
class _State:
    """What the cache knows of one page besides its output."""

    tables: frozenset[str] = frozenset()
    partials: frozenset[str] = frozenset()
    values: frozenset[str] = frozenset()
    error: str | None = None
    error_at: float | None = None


@dataclass(frozen=True, slots=True)
class RenderCacheStatistics:
    """Counters for tests and operators: `renders` counts every render attempt since start."""

    pages: int
    entries: int
    renders: int
    failures: int
    writes: int




def header_type(content_type: str) -> str:
    """The Content-Type header for a page: UTF-8 said out loud for textual types."""
    if "charset=" not in content_type and content_type.startswith(_TEXTUAL):
        return f"{content_type}; charset=utf-8"
    return content_type


@dataclass
class RenderCache:
    """Pages, their dependencies and their last good output; subscribe `on_change` to the bus."""

    conn: apsw.Connection
    guard: sqlguard.Guard
    access: Access
    clock: Callable[[], float] = time.time
    run_context: ContextRunner | None = None  # runs a page's Starlark context(ctx)

    def __post_init__(self) -> None:
        self.pages: dict[int, Page] = {}
        self.by_path: dict[str, int] = {}
        self.entries: dict[int, Entry] = {}
        self.states: dict[int, _State] = {}
        self.templates: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self._read_sets: dict[str, frozenset[str]] = {}
        self.stale: set[int] = set()  # pages whose stored output may be out of date: render before serving
        self._renders = self._failures = self._writes = 0

    # ------------------------------------------------------------------ start and stop

    def start(self) -> None:
        """Load pages and persisted output; mark stale what must be rendered before it is served
        (everything after a crash). Renders nothing: no tenant code runs here."""
        conn = self.conn
        self._load_pages()
        self.templates = pages_library.TEMPLATES.all(conn)
        self.values = pages_library.VALUES.all(conn)
        meta = dict(conn.execute("SELECT key, value FROM _wce_meta WHERE key IN (?, ?)", (CLEAN_KEY, STALE_KEY)))
        clean = meta.get(CLEAN_KEY) == "1"
        if meta:
            with transaction(conn):  # from now on a crash means "do not trust the rows"
                conn.execute("DELETE FROM _wce_meta WHERE key IN (?, ?)", (CLEAN_KEY, STALE_KEY))
        for pid, body, etag, ctype, deps, rendered_at, error in conn.execute(
                "SELECT page_id, body, etag, content_type, read_tables, rendered_at, error FROM _wce_render_cache"):
            page = self.pages.get(pid)
            if page is None:
                continue
            d = _load_deps(deps)
            self.states[pid] = _State(frozenset(d.get("tables", ())), frozenset(d.get("partials", ())),
                                      frozenset(d.get("values", ())), error, d.get("error_at"))
            if body is not None and etag:
                self.entries[pid] = Entry(pid, page.path, str(d.get("access", page.access)), ctype or "",
                                          bytes(body), etag, rendered_at or 0.0)
        if clean:
            self.stale = (set(self.pages) - set(self.states)) | (_ids(meta.get(STALE_KEY)) & set(self.pages))
        else:
            self.stale = set(self.pages)

    def mark_clean(self) -> None:
        """Record that every commit so far has been rendered, but for the pages still stale (call
        after the last flush)."""
        stale = sorted(self.stale & set(self.pages))
        with transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO _wce_meta(key, value) VALUES (?, '1')", (CLEAN_KEY,))
            if stale:
                self.conn.execute("INSERT OR REPLACE INTO _wce_meta(key, value) VALUES (?, ?)",
                                  (STALE_KEY, json.dumps(stale)))

    # ------------------------------------------------------------------ serving

    def page_at(self, path: str) -> Page | None:
        """The page published at path, if any."""
        pid = self.by_path.get(path)
        return self.pages.get(pid) if pid is not None else None

    def entry(self, page: Page) -> Entry | None:
        """The output to serve for page: only one rendered for its current access level. A stale
        page is rendered first, in the budget of the request that asks for it."""
        if page.id in self.stale:
            self.render([page.id])
        return self.current(page)

    def current(self, page: Page) -> Entry | None:
        """The output of a page that is not stale, without rendering (what gateways are sent)."""
        if page.id in self.stale:
            return None
        e = self.entries.get(page.id)
        return e if e is not None and e.access == page.access else None

    def status(self, page_id: int) -> dict[str, Any]:
        """Render status for the edit mode: `rendered_at`, `etag`, `render_error`, `render_error_at`."""
        e = self.entries.get(page_id)
        s = self.states.get(page_id, _State())
        return {"rendered_at": e.rendered_at if e else None, "etag": e.etag if e else None,
                "render_error": s.error, "render_error_at": s.error_at}

    def statistics(self) -> RenderCacheStatistics:
        """Counts since this worker started."""
        return RenderCacheStatistics(len(self.pages), len(self.entries), self._renders, self._failures, self._writes)

    # ------------------------------------------------------------------ the bus subscriber

    def on_change(self, cs: ChangeSet) -> None:
        """Re-render what the commit can have changed (see the module docstring)."""
        tables = {t.lower() for t in cs.tables}
        dirty: set[int] = set()
        if cs.schema_changed:
            self._read_sets.clear()
            self.access.invalidate()
            dirty.update(self.pages)
        if "_wce_pages" in tables:
            dirty.update(self._load_pages())
        if "_wce_templates" in tables:
            old, self.templates = self.templates, pages_library.TEMPLATES.all(self.conn)
            changed = _changed_keys(old, self.templates)
            dirty.update(pid for pid, s in self.states.items() if s.partials & changed)
        if "_wce_values" in tables:
            old_values, self.values = self.values, pages_library.VALUES.all(self.conn)
            changed = _changed_keys(old_values, self.values)
            dirty.update(pid for pid, s in self.states.items() if s.values & changed)
        if tables & GRANT_TABLES:
            self.access.invalidate()
            dirty.update(pid for pid, p in self.pages.items() if p.access != "admin")
        user_tables = {t for t in tables if not sqlguard.is_internal(t)}
        if user_tables:
            dirty.update(pid for pid, s in self.states.items() if s.tables & user_tables)
        self.render(dirty)

    def _load_pages(self) -> set[int]:
        """Re-read the page definitions; the ids that changed, appeared or went away."""
        old = self.pages
        self.pages = {p.id: p for p in list_pages(self.conn)}
        self.by_path = {p.path: p.id for p in self.pages.values()}
        changed = {pid for pid, p in self.pages.items() if old.get(pid) != p}
        gone = set(old) - set(self.pages)
        for pid in gone:
            self.entries.pop(pid, None)
            self.states.pop(pid, None)
            self.stale.discard(pid)
        return changed

    # ------------------------------------------------------------------ rendering

    def render(self, page_ids: Iterable[int]) -> None:
        """Render these pages now, keep and persist what changed."""
        rows: list[tuple[Any, ...]] = []
        now = self.clock()
        for pid in sorted(page_ids):
            page = self.pages.get(pid)
            if page is None:
                continue
            out = render_page(self.guard, self.access, page, self.templates, self.values, self._read_sets,
                              run_context=self.run_context)
            self._renders += 1
            self.stale.discard(pid)
            if self._keep(page, out, now):
                rows.append(self._row(pid))
        if rows:
            with transaction(self.conn):
                self.conn.executemany(
                    "INSERT OR REPLACE INTO _wce_render_cache(page_id, body, etag, content_type, read_tables,"
                    " rendered_at, error) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._writes += 1

    def _keep(self, page: Page, out: Outcome, now: float) -> bool:
        """Fold one outcome into the cache; True if anything worth persisting changed."""
        pid = page.id
        before = self.states.get(pid)
        old = self.entries.get(pid)
        state = _State(out.read_tables, out.partials, out.value_keys)
        changed = before is None or (before.tables, before.partials, before.values) != (
            state.tables, state.partials, state.values)
        if out.error is not None:
            self._failures += 1
            same_error = before is not None and before.error == out.error
            state.error, state.error_at = out.error, (before.error_at if same_error and before else now)
            changed = changed or not same_error
            if out.denied and old is not None:
                del self.entries[pid]
                changed = True
        else:
            assert out.body is not None and out.etag is not None
            ctype = header_type(page.content_type)
            if (old is None or old.etag != out.etag or old.access != page.access or old.path != page.path
                    or old.content_type != ctype):
                self.entries[pid] = Entry(pid, page.path, page.access, ctype, out.body, out.etag, now)
                changed = True
            changed = changed or (before is not None and before.error is not None)
        self.states[pid] = state
        return changed

    def _row(self, pid: int) -> tuple[Any, ...]:
        e = self.entries.get(pid)
        s = self.states[pid]
        deps = {"tables": sorted(s.tables), "partials": sorted(s.partials), "values": sorted(s.values),
                "access": e.access if e else None, "error_at": s.error_at}
        return (pid, e.body if e else None, e.etag if e else None, e.content_type if e else None,
                json.dumps(deps, separators=(",", ":")), e.rendered_at if e else None, s.error)

def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    return {k for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


_ABSENT = object()


def _ids(text: str | None) -> set[int]:
    """Page ids stored as a JSON list (nothing if the text is not one)."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return set()
    return {v for v in value if type(v) is int} if isinstance(value, list) else set()


def _load_deps(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
