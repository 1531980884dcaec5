"""The commit-hook event bus: which rows each committed transaction changed, published in order.

SQLite hooks on the connection collect, while a transaction runs, every row it writes; the set is
published only once the commit has succeeded, and dropped on rollback:

    preupdate hook   one call per row written (INSERT, UPDATE, DELETE), before the write. Unlike
                     the plain update hook it also sees `DELETE FROM t` without WHERE (the truncate
                     optimisation is off while it is registered), the row INSERT OR REPLACE
                     removes, and WITHOUT ROWID tables (whose rowid it reports as 0).
    WAL hook         called after the commit is in the WAL, before COMMIT returns: the pending rows
                     become one ChangeSet, queued. The commit hook would be too early (a commit can
                     still fail after it).
    rollback hook    the pending rows are dropped.

No subscriber runs inside a hook: a hook may not touch the connection, and a subscriber may
query it (the render cache renders pages, realtime streams check row policies). Change sets
wait in a queue until `flush()`, which the worker calls after each request (and anyone may call
after a commit); flush delivers them in commit order, each to every subscriber before the next.
A subscriber that writes makes a new commit, delivered in turn by the same flush.

`set_wal_hook` turns SQLite's auto-checkpoint off, so the WAL hook checkpoints (PASSIVE) itself
once the WAL passes `checkpoint_pages`, as SQLite's default hook does; otherwise the WAL would
grow without bound. Never call `wal_autocheckpoint` on a connection with a bus: it silently
replaces the hook.

Savepoints: SQLite has no hook for `ROLLBACK TO`, so code that undoes a savepoint and goes on to
commit tells the bus itself: `m = bus.mark()` before, `bus.undo_to(m)` after the ROLLBACK TO
(`bus_for(conn)` finds a connection's bus). Otherwise, and for a failed statement inside a
transaction that still commits, the undone rows are reported with the commit: consumers treat a
change as "look again", never as proof of a value.
"""

from __future__ import annotations

import sys
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw

CHECKPOINT_PAGES = 1000  # SQLite's own auto-checkpoint default
MAX_ROW_CHANGES = 10_000  # per commit; beyond it only the tables are kept (see ChangeSet.bulk)

_OPS = {"INSERT": "insert", "UPDATE": "update", "DELETE": "delete"}
_BUSES: weakref.WeakKeyDictionary[apsw.Connection, EventBus] = weakref.WeakKeyDictionary()


def bus_for(conn: apsw.Connection) -> EventBus | None:
    """The bus installed on a connection, if any."""
    return _BUSES.get(conn)


@dataclass(frozen=True, slots=True)
class Change:
    """One row written by a commit.

    `rowid` is None for a WITHOUT ROWID table (SQLite gives such rows no rowid). `old` holds the
    row's column values before a DELETE (so a realtime stream can still decide whether the caller
    was allowed to see the row that is gone); it is None for inserts and updates.
    """

    table: str
    op: str
    rowid: int | None
    old: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """What one committed transaction changed.

    `seq` counts commits seen by this bus, from 1. `tables` names every table written. `changes`
    lists the rows, in the order they were written, unless the commit wrote more than
    MAX_ROW_CHANGES rows: then `changes` is empty and `bulk` is True ("many rows of these tables
    changed"). `schema_changed` is True when the commit changed the schema (CREATE/DROP/ALTER),
    which no row hook reports.
    """

    seq: int
    tables: frozenset[str]
    changes: tuple[Change, ...]
    bulk: bool = False
    schema_changed: bool = False


Subscriber = Callable[[ChangeSet], None]


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """A snapshot for tests and operators."""

    published: int
    pending_rows: int
    queued: int
    subscribers: int
    checkpoints: int


class Subscription:
    """A registered subscriber; `close()` (or leaving the `with` block) unregisters it, idempotently."""

    def __init__(self, bus: EventBus, fn: Subscriber) -> None:
        self._bus = bus
        self.fn = fn
        self.closed = False

    def close(self) -> None:
        """Stop receiving change sets."""
        if not self.closed:
            self.closed = True
            self._bus._subscribers.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Hooks on one WAL-mode connection, a queue of committed change sets, and its subscribers."""

    def __init__(self, conn: apsw.Connection, *, checkpoint_pages: int = CHECKPOINT_PAGES,
                 max_rows: int = MAX_ROW_CHANGES,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        if str(conn.pragma("journal_mode")).lower() != "wal":
            raise ValueError("the event bus needs a connection in WAL mode")
        self.conn = conn
        self.checkpoint_pages = checkpoint_pages
        self.max_rows = max_rows
        self.on_error = on_error or _print_error
        self._pending: list[tuple[str, str, int, tuple[Any, ...] | None]] = []
        self._pending_tables: set[str] = set()
        self._overflow = False
        self._ready: deque[tuple[frozenset[str], list[tuple[str, str, int, Any]], bool]] = deque()
        self._subscribers: list[Subscription] = []
        self._flushing = False
        self._seq = 0
        self._checkpoints = 0
        self._commits = 0  # counted by the WAL hook, at commit time (not at publication)
        self._last_write: dict[str, int] = {}  # table -> number of the last commit that wrote it
        self._data_version: int | None = None  # PRAGMA data_version, until the next flush
        self._schema_version = int(conn.pragma("schema_version"))
        self._without_rowid: dict[str, bool] = {}
        conn.preupdate_hook(self._on_preupdate, id=self)
        conn.set_rollback_hook(self._on_rollback, id=self)
        conn.set_wal_hook(self._on_wal)
        _BUSES[conn] = self

    # ---------------------------------------------------------------- hooks (never touch conn)

    def _on_preupdate(self, u: apsw.PreUpdate) -> None:
        if u.database_name != "main":
            return
        table = u.table_name
        self._pending_tables.add(table)
        if self._overflow:
            return
        if len(self._pending) >= self.max_rows:
            self._overflow = True
            self._pending.clear()
            return
        op = _OPS[u.op]
        if op == "update" and u.rowid != u.rowid_new:  # the rowid itself changed: a move
            self._pending.append((table, "delete", u.rowid, u.old))
            self._pending.append((table, "insert", u.rowid_new, None))
        else:
            self._pending.append((table, op, u.rowid, u.old if op == "delete" else None))

    def _on_rollback(self) -> None:
        self._pending.clear()
        self._pending_tables.clear()
        self._overflow = False

    def _on_wal(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        if dbname == "main":
            self._commits += 1
            for table in self._pending_tables:
                self._last_write[table] = self._commits
            self._ready.append((frozenset(self._pending_tables), self._pending, self._overflow))
            self._pending = []
            self._pending_tables = set()
            self._overflow = False
            if pages >= self.checkpoint_pages:
                try:
                    conn.wal_checkpoint(dbname, apsw.SQLITE_CHECKPOINT_PASSIVE)
                    self._checkpoints += 1
                except apsw.Error:
                    pass  # a reader holds the WAL; the next commit tries again
        return apsw.SQLITE_OK

    # ---------------------------------------------------------------- outside hooks

    def mark(self) -> tuple[int, frozenset[str], bool]:
        """Where the open transaction's rows stand (take it before a SAVEPOINT)."""
        return len(self._pending), frozenset(self._pending_tables), self._overflow

    def undo_to(self, mark: tuple[int, frozenset[str], bool]) -> None:
        """Forget the rows written since mark (call after ROLLBACK TO that savepoint)."""
        length, tables, overflow = mark
        if self._overflow and not overflow:
            return  # the rows are gone already; the commit will say "many rows" (over-reporting)
        del self._pending[length:]
        self._pending_tables = set(tables)
        self._overflow = overflow

    def subscribe(self, fn: Subscriber) -> Subscription:
        """Deliver every change set published from now on to fn (in commit order)."""
        sub = Subscription(self, fn)
        self._subscribers.append(sub)
        return sub

    def flush(self) -> int:
        """Publish every committed change set to the subscribers; how many were published.

        Call it after a commit has returned, never from inside a hook. Re-entrant calls (from a
        subscriber) return at once: the outer call delivers what they would have.
        """
        if self._flushing:
            return 0
        self._flushing = True
        published = 0
        try:
            while self._ready:
                tables, rows, bulk = self._ready.popleft()
                try:
                    cs = self._build(tables, rows, bulk)
                except Exception as exc:  # the connection failed us; nothing sensible to publish
                    self.on_error(exc)
                    continue
                published += 1
                for sub in list(self._subscribers):
                    if sub.closed:
                        continue
                    try:
                        sub.fn(cs)
                    except Exception as exc:  # one broken subscriber must not starve the others
                        self.on_error(exc)
        finally:
            self._flushing = False
            self._data_version = None  # the next request reads it afresh
        return published

    def _build(self, tables: frozenset[str], rows: list[tuple[str, str, int, Any]], bulk: bool) -> ChangeSet:
        self._seq += 1
        version = int(self.conn.pragma("schema_version"))
        schema_changed = version != self._schema_version
        if schema_changed:
            self._schema_version = version
            self._without_rowid.clear()
        changes = tuple(
            Change(table, op, None if self._is_without_rowid(table) else rowid, old)
            for table, op, rowid, old in rows
        )
        return ChangeSet(self._seq, tables, changes, bulk, schema_changed)

    def _is_without_rowid(self, table: str) -> bool:
        known = self._without_rowid.get(table)
        if known is None:
            row = self.conn.execute("SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?",
                                    (table,)).fetchone()
            known = self._without_rowid[table] = bool(row and row[0])
        return known

    def version(self, *tables: str) -> tuple[int, ...]:
        """A stamp that changes whenever any of `tables` may have changed, for a cache of their
        contents to compare: this connection's commits that wrote them (counted by the WAL hook, so
        known as soon as COMMIT returns, before publication) and any commit of another connection
        (`PRAGMA data_version`, read at most once between two flushes: once per request, since
        the worker flushes after each)."""
        if self._data_version is None:
            self._data_version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        return (self._data_version, *(self._last_write.get(t, 0) for t in tables))

    @property
    def published(self) -> int:
        """Change sets published so far (`statistics().published`, without building the record:
        the worker reads it after every request)."""
        return self._seq

    def statistics(self) -> BusStatistics:
        """Counts for tests and operators."""
        return BusStatistics(self._seq, len(self._pending), len(self._ready), len(self._subscribers),
                             self._checkpoints)

    def close(self) -> None:
        """Remove the hooks (the connection stays open); queued change sets are dropped."""
        self.conn.preupdate_hook(None, id=self)
        self.conn.set_rollback_hook(None, id=self)
        self.conn.set_wal_hook(None)
        self._ready.clear()
        _BUSES.pop(self.conn, None)


def _print_error(exc: BaseException) -> None:
    print("wce: an event subscriber failed:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
