"""Opening a cenv's SQLite file, and transactions.

WAL with synchronous=NORMAL: a committed transaction survives the death of the process (SIGKILL,
OOM kill) because it is in the WAL in the OS's page cache; only a power loss can take the last
commits. Foreign keys on, a busy timeout so a second writer (the CLI) waits instead of failing.
Defensive mode on: no SQL, ours or a tenant's, can write SQLite's schema or a virtual table's
shadow tables (a full-text index's `_fts_data`...) directly, or otherwise corrupt the file on purpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import apsw

BUSY_TIMEOUT_MS = 5000


def connect(path: str, *, create: bool = False) -> apsw.Connection:
    """Open a cenv file read-write; with create=False a missing file is an error, never made."""
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = apsw.Connection(path, flags=flags)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    conn.pragma("foreign_keys", True)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "NORMAL")
    return conn


@contextlib.contextmanager
def transaction(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

    IMMEDIATE takes the write lock at once, so a read-then-write inside never fails half-way with
    SQLITE_BUSY_SNAPSHOT. Inside an outer transaction (a script's request is one transaction)
    it is a savepoint: its work is undone alone on error, and committed with the outer one.
    """
    if not conn.getautocommit():
        from .events import bus_for  # the bus must forget rows a ROLLBACK TO undoes

        bus = bus_for(conn)
        mark = bus.mark() if bus else None
        conn.execute("SAVEPOINT wce_nested")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO wce_nested")
            conn.execute("RELEASE wce_nested")
            if bus is not None and mark is not None:
                bus.undo_to(mark)
            raise
        conn.execute("RELEASE wce_nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if not conn.getautocommit():
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def set_size_cap(conn: apsw.Connection, max_mb: int) -> None:
    """Cap the database file size: past it writes fail with FullError and the connection stays usable."""
    page_size = conn.pragma("page_size")
    conn.pragma("max_page_count", max(1, (max_mb << 20) // int(page_size)))
