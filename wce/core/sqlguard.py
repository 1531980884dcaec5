"""The SQLite authorizer that fences tenant-written SQL away from the `_wce_` tables.

One Guard is installed permanently on a worker's connection (re-installing an authorizer would
expire apsw's statement cache). Our own SQL runs in TRUSTED mode. SQL that contains anything a
tenant wrote (page queries, row-policy expressions, filters built into a statement, script
queries) runs in READ mode (SELECT only) or DATA mode (also INSERT/UPDATE/DELETE of tenant tables),
and in both modes every access to a `_wce_` table is denied, directly, through a view, a subquery
or a trigger, as are PRAGMA, ATTACH, DDL and transaction control.

SQLite consults the authorizer only when a statement is prepared, and apsw caches prepared
statements by their text. So untrusted SQL is always prefixed with a marker naming its mode and
scope (`/*wce:read:user*/`): a statement prepared under one mode can only ever be found again in
the cache under the same mode, and never by our own trusted SQL text. The same holds for a
`table_filter`: its decision is frozen into the cached statement, so the scope must name
everything the filter depends on (the role and the grants' generation, Access.generation), or a
revoked grant would keep working for SQL prepared before.

Tenant SQL is never prepared without the Guard: SQLite applies some PRAGMAs (`query_only`,
`writable_schema`, `foreign_keys`...) while it prepares them, so even inspecting a statement
(`tables_read`) goes through the Guard, which collects what it allowed instead of being swapped out.

A full-text index's shadow tables (`{table}_fts_data`, `_idx`, `_config`, `_docsize`, `_content`)
are written only by SQLite's FTS5 module, from inside the statement that changes the indexed table
(through our triggers); a statement that names one itself is refused while it is prepared (in a
text of several statements, those after the first are prepared once the first has run, and are
not). The worker's connection is also in SQLite's defensive mode (wce.core.db.connect), which
refuses every such write, whatever prepared it.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apsw

from .errors import Forbidden, Invalid


class Mode(enum.Enum):
    """What SQL may do."""

    TRUSTED = "trusted"
    READ = "read"
    DATA = "data"
    DDL = "ddl"  # one CREATE TABLE / CREATE INDEX of a tenant table


_ROW_OPS = {apsw.SQLITE_READ: "read", apsw.SQLITE_INSERT: "insert", apsw.SQLITE_UPDATE: "update",
            apsw.SQLITE_DELETE: "delete"}
_ALWAYS_OK = {apsw.SQLITE_SELECT, apsw.SQLITE_RECURSIVE}
_HARMLESS_PRAGMAS = frozenset({"data_version"})
_BANNED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "sqlite_offset"})


_FTS_SHADOW = re.compile(r".+_fts_(data|idx|config|docsize|content)", re.IGNORECASE)


def is_internal(table: str) -> bool:
    """True for tables no tenant SQL may touch."""
    return table.lower().startswith("_wce_")


def is_reserved(table: str) -> bool:
    """True for tables tenant SQL may neither read nor write: ours (`_wce_`), SQLite's own
    (`sqlite_`), table-valued pragmas, and `dbstat` (every table's pages, ours included)."""
    low = table.lower()
    return low.startswith(("_wce_", "sqlite_", "pragma_")) or low == "dbstat"


def is_fts_shadow(table: str) -> bool:
    """True for the names of a full-text index's shadow tables (`{table}_fts_data`...): the FTS5
    module's to write, reserved for it (wce.core.tables refuses them as table names)."""
    return _FTS_SHADOW.fullmatch(table) is not None


class Guard:
    """The connection's authorizer, switched between modes by context managers."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.mode = Mode.TRUSTED
        self.table_filter: Callable[[str, str], bool] | None = None
        self.denied: str | None = None
        # True while the tenant's statement is being prepared; False once it runs (run() clears it
        # from apsw's exec tracer), when SQLite modules prepare statements of their own (FTS5
        # writing its shadow tables for a row our trigger indexes)
        self.preparing = False
        self.collected: set[str] | None = None  # tables read, while tables_read() inspects a statement
        conn.authorizer = self._authorize

    @staticmethod
    def of(conn: apsw.Connection) -> Guard:
        """The Guard installed on conn (RuntimeError if there is none: tenant SQL is never
        prepared without one)."""
        guard = getattr(conn.authorizer, "__self__", None)
        if not isinstance(guard, Guard):
            raise RuntimeError("this connection has no Guard")
        return guard

    def _authorize(self, op: int, p1: str | None, p2: str | None, dbname: str | None,
                   trigger_or_view: str | None) -> int:
        verdict = self._decide(op, p1, p2)
        if self.collected is not None and op == apsw.SQLITE_READ and p1 and verdict == apsw.SQLITE_OK:
            self.collected.add(p1)
        return verdict

    def _decide(self, op: int, p1: str | None, p2: str | None) -> int:
        mode = self.mode
        if mode is Mode.TRUSTED:
            return apsw.SQLITE_OK
        if mode is Mode.DDL:
            return self._authorize_ddl(op, p1, p2)
        action = _ROW_OPS.get(op)
        if action is not None:
            table = p1 or ""
            if is_reserved(table):
                return self._deny(f"access to {table} is not allowed")
            if action != "read" and mode is Mode.READ:
                return self._deny("this SQL may only read")
            if action != "read" and self.preparing and is_fts_shadow(table):
                return self._deny(f"{table} belongs to a full-text index: change its table instead")
            if self.table_filter is not None and table and not self.table_filter(table, action):
                return self._deny(f"no {action} access to {table}")
            return apsw.SQLITE_OK
        if op in _ALWAYS_OK:
            return apsw.SQLITE_OK
        if op == apsw.SQLITE_PRAGMA and (p1 or "").lower() in _HARMLESS_PRAGMAS and p2 is None:
            return apsw.SQLITE_OK  # FTS5 reads `PRAGMA data_version` itself during MATCH
        if op == apsw.SQLITE_FUNCTION:
            if (p2 or "").lower() in _BANNED_FUNCTIONS:
                return self._deny(f"function {p2} is not allowed")
            return apsw.SQLITE_OK
        return self._deny(f"{apsw.mapping_authorizer_function.get(op, op)} is not allowed here")

    def _authorize_ddl(self, op: int, p1: str | None, p2: str | None) -> int:
        if op == apsw.SQLITE_CREATE_TABLE:
            return self._deny_reserved(p1) or apsw.SQLITE_OK
        if op == apsw.SQLITE_CREATE_INDEX:
            return self._deny_reserved(p1, index=True) or self._deny_reserved(p2) or apsw.SQLITE_OK
        if op == apsw.SQLITE_REINDEX:  # SQLite fills a new index this way
            return self._deny_reserved(p1, index=True) or apsw.SQLITE_OK
        if op in _ROW_OPS:
            table = (p1 or "").lower()
            if table in ("sqlite_master", "sqlite_schema") and (op != apsw.SQLITE_READ or p2 == "ROWID"):
                return apsw.SQLITE_OK  # SQLite's own bookkeeping of the new object (by rowid)
            if op == apsw.SQLITE_READ and not is_reserved(table):
                return apsw.SQLITE_OK  # CREATE TABLE ... AS SELECT
            return self._deny(f"DDL may not touch {p1}")
        if op in _ALWAYS_OK or (op == apsw.SQLITE_FUNCTION and (p2 or "").lower() not in _BANNED_FUNCTIONS):
            return apsw.SQLITE_OK
        return self._deny("only CREATE TABLE and CREATE INDEX are allowed")

    def _deny_reserved(self, name: str | None, index: bool = False) -> int:
        if index and name and name.startswith("sqlite_autoindex_"):
            return 0  # SQLite's own index for a PRIMARY KEY or UNIQUE of the new table
        if name and (is_internal(name) or name.lower().startswith("sqlite_")):
            return self._deny(f"names starting with _wce_ or sqlite_ are reserved: {name}")
        if name and is_fts_shadow(name):
            return self._deny(f"names ending in _fts_data, _fts_idx, _fts_config, _fts_docsize or "
                              f"_fts_content are reserved for full-text indexes: {name}")
        return 0

    def _deny(self, why: str) -> int:
        self.denied = why
        return apsw.SQLITE_DENY

    @contextlib.contextmanager
    def untrusted(self, mode: Mode, table_filter: Callable[[str, str], bool] | None = None) -> Iterator[None]:
        """Run the block's statement preparations under `mode` (and an optional per-table check)."""
        prev = self.mode, self.table_filter, self.preparing
        self.mode, self.table_filter, self.denied, self.preparing = mode, table_filter, None, True
        try:
            yield
        finally:
            self.mode, self.table_filter, self.preparing = prev

    def _prepared(self, *_: Any) -> bool:
        """apsw's exec tracer: the tenant's statement is prepared and about to run."""
        self.preparing = False
        return True

    def tables_read(self, sql: str) -> frozenset[str]:
        """Every table sql reads, through views too, found by preparing it (never running it)
        under this Guard in DATA mode: the Guard collects the reads it allowed. apsw.AuthError
        if the Guard refuses the statement, apsw.SQLError if it is not SQL."""
        import apsw.ext

        seen: set[str] = set()
        prev = self.collected
        with self.untrusted(Mode.DATA):
            self.collected = seen
            try:  # can_cache=False inside: the authorizer sees every table, even for a cached text
                apsw.ext.query_info(self.conn, marked(sql, Mode.DATA, "reads"))
            finally:
                self.collected = prev
        return frozenset(seen)


def marked(sql: str, mode: Mode, scope: str = "") -> str:
    """The statement text as it must be executed under mode (see module docstring)."""
    return f"/*wce:{mode.value}:{scope}*/ {sql}"


def run(guard: Guard, mode: Mode, sql: str, params: Sequence[Any] | dict[str, Any] = (), *, scope: str = "",
        table_filter: Callable[[str, str], bool] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Execute tenant SQL under mode; return column names and all rows.

    A statement the authorizer refused raises Forbidden with the reason; any other SQLite
    complaint about the SQL raises Invalid with SQLite's message (safe: it names only what the
    tenant wrote).
    """
    cur = guard.conn.cursor()
    cur.exec_trace = guard._prepared
    with guard.untrusted(mode, table_filter):
        try:
            cur.execute(marked(sql, mode, scope), params)
            try:
                cols = [d[0] for d in cur.get_description()]
            except apsw.ExecutionCompleteError:
                return [], []
            return cols, cur.fetchall()
        except apsw.AuthError:
            raise Forbidden(guard.denied or "not allowed") from None
        except (apsw.SQLError, apsw.MismatchError, apsw.RangeError, apsw.BindingsError) as exc:
            if guard.denied:
                raise Forbidden(guard.denied) from None
            raise Invalid(_clean(exc)) from None


def check(guard: Guard, mode: Mode, sql: str, *, scope: str = "validate",
          table_filter: Callable[[str, str], bool] | None = None) -> None:
    """Prepare (without running) tenant SQL under mode: Forbidden or Invalid if it cannot run."""
    import apsw.ext

    with guard.untrusted(mode, table_filter):
        try:
            info = apsw.ext.query_info(guard.conn, marked(sql, mode, scope))
        except apsw.AuthError:
            raise Forbidden(guard.denied or "not allowed") from None
        except (apsw.SQLError, apsw.BindingsError) as exc:
            if guard.denied:
                raise Forbidden(guard.denied) from None
            raise Invalid(_clean(exc)) from None
    if info.query_remaining and info.query_remaining.strip(" \t\r\n;"):
        raise Invalid("only one statement is allowed")


def _clean(exc: BaseException) -> str:
    msg = str(exc)
    for prefix in ("SQLError: ", "Error: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg[:500]


def tables_read(where: Guard | apsw.Connection, sql: str) -> frozenset[str]:
    """Every table a statement reads, through views too (for render-on-write): Guard.tables_read
    with the Guard given or the one installed on the connection."""
    guard = where if isinstance(where, Guard) else Guard.of(where)
    return guard.tables_read(sql)
