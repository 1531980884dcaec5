"""The commit-hook event bus: what it reports, when, and that it keeps the WAL bounded."""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import pytest

from wce.core import db
from wce.core.events import ChangeSet, EventBus, bus_for


@pytest.fixture
def conn(tmp_path: Path) -> apsw.Connection:
    c = db.connect(str(tmp_path / "t.sqlite"), create=True)
    c.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT UNIQUE);"
        "CREATE TABLE tags(name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;"
        "CREATE TABLE other(x);"
    )
    return c


@pytest.fixture
def seen(conn: apsw.Connection) -> tuple[EventBus, list[ChangeSet]]:
    bus = EventBus(conn)
    got: list[ChangeSet] = []
    bus.subscribe(got.append)
    return bus, got


def rows(cs: ChangeSet) -> list[tuple[str, str, int | None]]:
    return [(c.table, c.op, c.rowid) for c in cs.changes]


def test_a_transaction_is_published_once_after_commit(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    with db.transaction(conn):
        conn.execute("INSERT INTO notes(body) VALUES ('a'), ('b')")
        conn.execute("UPDATE notes SET body = 'c' WHERE id = 1")
        conn.execute("DELETE FROM notes WHERE id = 2")
        assert bus.flush() == 0  # nothing is published before COMMIT has returned
    assert got == []  # and nothing is delivered before flush
    assert bus.flush() == 1
    [cs] = got
    assert rows(cs) == [("notes", "insert", 1), ("notes", "insert", 2), ("notes", "update", 1), ("notes", "delete", 2)]
    assert cs.tables == {"notes"} and cs.seq == 1 and not cs.bulk
    assert cs.changes[3].old == (2, "b")  # a deleted row keeps its values for policy checks
    assert bus.flush() == 0


def test_rollback_publishes_nothing(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    with pytest.raises(RuntimeError):
        with db.transaction(conn):
            conn.execute("INSERT INTO notes(body) VALUES ('a')")
            raise RuntimeError
    try:
        with conn:  # apsw's own savepoint-based block
            conn.execute("INSERT INTO notes(body) VALUES ('b')")
            raise ValueError
    except ValueError:
        pass
    conn.execute("BEGIN; INSERT INTO other VALUES (1); ROLLBACK")
    assert bus.flush() == 0 and got == []
    # and the rolled-back rows do not leak into the next commit
    conn.execute("INSERT INTO other VALUES (2)")
    bus.flush()
    assert [rows(cs) for cs in got] == [[("other", "insert", 1)]]


def test_savepoint_rollback_is_forgotten_when_told(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    assert bus_for(conn) is bus
    with db.transaction(conn):
        conn.execute("INSERT INTO notes(body) VALUES ('kept')")
        mark = bus.mark()
        conn.execute("SAVEPOINT inner")
        conn.execute("INSERT INTO other VALUES (1)")
        conn.execute("ROLLBACK TO inner")
        conn.execute("RELEASE inner")
        bus.undo_to(mark)
    bus.flush()
    assert [rows(cs) for cs in got] == [[("notes", "insert", 1)]] and got[0].tables == {"notes"}


def test_commit_order_and_autocommit_statements(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    conn.execute("INSERT INTO notes(body) VALUES ('1')")
    with db.transaction(conn):
        conn.execute("INSERT INTO other VALUES (1)")
    conn.execute("INSERT INTO notes(body) VALUES ('2')")
    assert bus.flush() == 3
    assert [cs.seq for cs in got] == [1, 2, 3]
    assert [sorted(cs.tables) for cs in got] == [["notes"], ["other"], ["notes"]]


def test_subscriber_writes_are_delivered_after_in_order(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    order: list[tuple[str, int]] = []

    def writer(cs: ChangeSet) -> None:
        order.append(("writer", cs.seq))
        if "notes" in cs.tables:
            conn.execute("INSERT INTO other VALUES (1)")  # a subscriber may use the connection
            assert bus.flush() == 0  # re-entrant flush defers to the outer one

    bus.subscribe(writer)
    bus.subscribe(lambda cs: order.append(("last", cs.seq)))
    conn.execute("INSERT INTO notes(body) VALUES ('x')")
    assert bus.flush() == 2
    assert order == [("writer", 1), ("last", 1), ("writer", 2), ("last", 2)]
    assert [sorted(cs.tables) for cs in got] == [["notes"], ["other"]]


def test_delete_without_where_reports_every_row(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    conn.execute("INSERT INTO notes(body) VALUES ('a'), ('b'), ('c')")
    bus.flush()
    conn.execute("DELETE FROM notes")
    bus.flush()
    assert rows(got[-1]) == [("notes", "delete", 1), ("notes", "delete", 2), ("notes", "delete", 3)]


def test_insert_or_replace_reports_the_replaced_row(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    conn.execute("INSERT INTO notes(id, body) VALUES (1, 'a')")
    conn.execute("INSERT OR REPLACE INTO notes(id, body) VALUES (5, 'a')")  # conflicts on body
    bus.flush()
    assert rows(got[-1]) == [("notes", "delete", 1), ("notes", "insert", 5)]


def test_rowid_change_is_a_move(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    conn.execute("INSERT INTO notes(id, body) VALUES (1, 'a')")
    conn.execute("UPDATE notes SET id = 7 WHERE id = 1")
    bus.flush()
    assert rows(got[-1]) == [("notes", "delete", 1), ("notes", "insert", 7)]


def test_without_rowid_tables_are_seen_with_no_rowid(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    conn.execute("INSERT INTO tags VALUES ('a', 1), ('b', 2)")
    conn.execute("UPDATE tags SET n = 3 WHERE name = 'a'")
    conn.execute("DELETE FROM tags")
    bus.flush()
    assert [rows(cs) for cs in got] == [
        [("tags", "insert", None), ("tags", "insert", None)],
        [("tags", "update", None)],
        [("tags", "delete", None), ("tags", "delete", None)],
    ]


def test_schema_change_is_flagged(conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, got = seen
    conn.execute("CREATE TABLE fresh(a)")
    conn.execute("INSERT INTO fresh VALUES (1)")
    bus.flush()
    assert [cs.schema_changed for cs in got] == [True, False]


def test_huge_commit_keeps_only_the_tables(conn: apsw.Connection) -> None:
    bus = EventBus(conn, max_rows=100)
    got: list[ChangeSet] = []
    bus.subscribe(got.append)
    with db.transaction(conn):
        conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)"
                     " INSERT INTO other SELECT i FROM n")
        conn.execute("INSERT INTO notes(body) VALUES ('x')")
    conn.execute("INSERT INTO other VALUES (1)")
    bus.flush()
    assert got[0].bulk and got[0].changes == () and got[0].tables == {"other", "notes"}
    assert not got[1].bulk and rows(got[1]) == [("other", "insert", 501)]


def test_failing_subscriber_does_not_stop_the_others(conn: apsw.Connection) -> None:
    errors: list[BaseException] = []
    bus = EventBus(conn, on_error=errors.append)
    got: list[ChangeSet] = []

    def boom(cs: ChangeSet) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(boom)
    bus.subscribe(got.append)
    conn.execute("INSERT INTO other VALUES (1)")
    bus.flush()
    assert len(got) == 1 and [str(e) for e in errors] == ["subscriber bug"]


def test_unsubscribe(conn: apsw.Connection) -> None:
    bus = EventBus(conn)
    got: list[ChangeSet] = []
    with bus.subscribe(got.append):
        assert bus.statistics().subscribers == 1
    assert bus.statistics().subscribers == 0
    conn.execute("INSERT INTO other VALUES (1)")
    bus.flush()
    assert got == []


def test_needs_wal(tmp_path: Path) -> None:
    c = apsw.Connection(str(tmp_path / "rollback-journal.sqlite"))
    with pytest.raises(ValueError):
        EventBus(c)


def wal_size_after_writes(path: Path, with_bus: bool, checkpoint_pages: int = 100) -> int:
    conn = db.connect(str(path), create=True)
    conn.execute("CREATE TABLE big(x)")
    if with_bus:
        bus = EventBus(conn, checkpoint_pages=checkpoint_pages)
    else:
        conn.set_wal_hook(lambda c, name, pages: apsw.SQLITE_OK)  # a hook that does not checkpoint
    payload = "x" * 3000
    for _ in range(1000):  # ~1 page per row plus a page of btree: ~2000 WAL frames in all
        conn.execute("INSERT INTO big VALUES (?)", (payload,))
    if with_bus:
        assert bus.statistics().checkpoints > 0
    size = os.path.getsize(f"{path}-wal")
    conn.close()
    return size


def test_checkpointing_keeps_the_wal_bounded(tmp_path: Path) -> None:
    unbounded = wal_size_after_writes(tmp_path / "a.sqlite", with_bus=False)
    bounded = wal_size_after_writes(tmp_path / "b.sqlite", with_bus=True)
    page = 4096 + 24
    assert unbounded > 1500 * page  # every frame stayed in the WAL
    assert bounded < 200 * page  # checkpointed every ~100 pages, and the WAL was reused


@pytest.mark.parametrize("module", ["wce.core.events", "wce.core.events_access", "wce.core.pages",
                                    "wce.core.pages_library", "wce.core.pages_render"])
def test_the_domain_side_stays_sync_and_http_free(module: str) -> None:
    import subprocess
    import sys

    code = f"import sys, {module}; print(','.join(m for m in ('trio', 'quart', 'hypercorn', 'wce.worker', 'wce.gateway', 'wce.proto') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""



def test_version_follows_own_commits_at_once_and_others_once_per_flush(
        conn: apsw.Connection, seen: tuple[EventBus, list[ChangeSet]]) -> None:
    bus, _ = seen
    v0 = bus.version("notes")
    conn.execute("INSERT INTO other (x) VALUES (1)")
    assert bus.version("notes") == v0  # another table
    conn.execute("INSERT INTO notes (body) VALUES ('a')")
    v1 = bus.version("notes")
    assert v1 != v0  # at COMMIT, before any flush
    bus.flush()
    v2 = bus.version("notes")
    other = db.connect(conn.filename)
    other.execute("INSERT INTO other (x) VALUES (2)")
    assert bus.version("notes") == v2  # PRAGMA data_version is read once between two flushes
    bus.flush()  # the end of a request
    assert bus.version("notes") != v2  # another connection committed: anything may have changed
