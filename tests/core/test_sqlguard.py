"""The authorizer fence around tenant SQL: every way to reach `_wce_` tables or escape is refused."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from wce.core import db, tables
from wce.core import sqlguard as g
from wce.core.errors import BadRequest, Forbidden, Invalid


@pytest.fixture
def guard() -> g.Guard:
    c = apsw.Connection(":memory:")
    c.execute(
        "CREATE TABLE _wce_users(id, pw); INSERT INTO _wce_users VALUES (1, 'secret');"
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body, owner); INSERT INTO notes(body, owner) VALUES ('a', 1);"
        "CREATE VIEW v_users AS SELECT * FROM _wce_users; CREATE VIEW v_notes AS SELECT * FROM notes;"
    )
    return g.Guard(c)


ESCAPES = [
    "SELECT * FROM _wce_users",
    "SELECT * FROM main._WCE_USERS",
    "SELECT * FROM v_users",
    "SELECT (SELECT pw FROM _wce_users) FROM notes",
    "SELECT * FROM notes WHERE owner IN (SELECT id FROM _wce_users)",
    "WITH x AS (SELECT * FROM _wce_users) SELECT * FROM x",
    "PRAGMA table_info(_wce_users)",
    "ATTACH ':memory:' AS other",
    "SELECT load_extension('x')",
    "BEGIN",
    "SELECT * FROM pragma_table_info('_wce_users')",
    "SELECT sql FROM sqlite_schema",
]


@pytest.mark.parametrize("sql", ESCAPES)
def test_read_mode_refuses(guard: g.Guard, sql: str) -> None:
    with pytest.raises(Forbidden):
        g.run(guard, g.Mode.READ, sql)


@pytest.mark.parametrize("sql", ESCAPES + ["INSERT INTO _wce_users VALUES (2, 'x')", "CREATE TABLE t(a)",
                                           "DROP TABLE notes", "UPDATE _wce_users SET pw = 'x'"])
def test_data_mode_refuses(guard: g.Guard, sql: str) -> None:
    with pytest.raises(Forbidden):
        g.run(guard, g.Mode.DATA, sql)


def test_read_mode_cannot_write(guard: g.Guard) -> None:
    with pytest.raises(Forbidden):
        g.run(guard, g.Mode.READ, "INSERT INTO notes(body) VALUES ('x')")
    assert guard.conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_allowed_reads_and_writes(guard: g.Guard) -> None:
    assert g.run(guard, g.Mode.READ, "SELECT body FROM v_notes") == (["body"], [("a",)])
    cols, rows = g.run(guard, g.Mode.DATA, "INSERT INTO notes(body) VALUES (?) RETURNING id", ("b",))
    assert rows == [(2,)]


def test_cached_trusted_statement_is_not_reused_untrusted(guard: g.Guard) -> None:
    # our own SQL, cached by apsw under TRUSTED mode ...
    assert guard.conn.execute("SELECT pw FROM _wce_users").fetchall() == [("secret",)]
    # ... the very same text from a tenant must still be refused
    with pytest.raises(Forbidden):
        g.run(guard, g.Mode.READ, "SELECT pw FROM _wce_users")
    # and trusted mode is restored after a refusal
    assert guard.conn.execute("SELECT pw FROM _wce_users").fetchall() == [("secret",)]


def test_table_filter(guard: g.Guard) -> None:
    with pytest.raises(Forbidden):
        g.run(guard, g.Mode.READ, "SELECT * FROM notes", scope="nobody", table_filter=lambda t, a: False)
    assert g.run(guard, g.Mode.READ, "SELECT id FROM notes", scope="all", table_filter=lambda t, a: True)[1] == [(1,)]


def test_check_validates_without_running(guard: g.Guard) -> None:
    g.check(guard, g.Mode.READ, "SELECT * FROM notes WHERE owner = :user_id")
    with pytest.raises(Forbidden):
        g.check(guard, g.Mode.READ, "SELECT * FROM v_users")
    with pytest.raises(Invalid):
        g.check(guard, g.Mode.READ, "SELECT * FROM nope")
    with pytest.raises(Invalid):
        g.check(guard, g.Mode.READ, "SELECT 1; SELECT 2")


def test_sql_errors_are_invalid_with_sqlite_message(guard: g.Guard) -> None:
    with pytest.raises(Invalid) as e:
        g.run(guard, g.Mode.READ, "SELEKT 1")
    assert "syntax error" in e.value.message


def test_tables_read_sees_through_views(guard: g.Guard) -> None:
    assert "notes" in g.tables_read(guard.conn, "SELECT * FROM v_notes")


# L2: finding which tables a query reads must never prepare it with the guard off

@pytest.mark.parametrize("sql,pragma,untouched", [
    ("PRAGMA query_only = 1", "query_only", 0),
    ("PRAGMA writable_schema = 1", "writable_schema", 0),
    ("PRAGMA recursive_triggers = 1", "recursive_triggers", 0),
])
def test_tables_read_never_runs_prepare_time_pragmas(guard: g.Guard, sql: str, pragma: str, untouched: int) -> None:
    with contextlib.suppress(apsw.Error):  # the statement cannot run under the guard either
        g.tables_read(guard.conn, sql)
    assert guard.conn.pragma(pragma) == untouched
    guard.conn.execute("INSERT INTO notes(body) VALUES ('still writable')")
    assert guard.conn.authorizer == guard._authorize  # the guard was never swapped out
    assert guard.mode is g.Mode.TRUSTED


def test_tables_read_goes_through_the_guard(guard: g.Guard) -> None:
    assert g.tables_read(guard, "SELECT n.body FROM v_notes n") >= {"notes"}
    with pytest.raises(apsw.AuthError):
        g.tables_read(guard.conn, "SELECT * FROM v_users")  # it would not run either


# L5: full-text shadow tables are SQLite's to write, never tenant SQL's

@pytest.fixture(params=["defensive", "guard alone"])
def fts_guard(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[g.Guard]:
    conn = db.connect(str(tmp_path / "c.db"), create=True)
    if request.param == "guard alone":  # each of the two layers refuses on its own
        conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 0)
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT)")
    tables.add_fts(conn, tables.Catalog(conn).get("notes"), ["title"])
    guard = g.Guard(conn)
    for i in range(40):
        g.run(guard, g.Mode.DATA, "INSERT INTO notes(title) VALUES (?)", (f"hello {i}",))
    yield guard
    conn.close()


def test_worker_connections_are_defensive(tmp_path: Path) -> None:
    conn = db.connect(str(tmp_path / "c.db"), create=True)
    assert conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT)")
    tables.add_fts(conn, tables.Catalog(conn).get("notes"), ["title"])
    with pytest.raises(apsw.SQLError):  # even our own SQL cannot write a shadow table directly
        conn.execute("UPDATE notes_fts_data SET block = x'ff' WHERE id > 10")


@pytest.mark.parametrize("sql", [
    "UPDATE notes_fts_data SET block = x'ffffffff' WHERE id > 10",
    "DELETE FROM notes_fts_idx",
    "INSERT INTO notes_fts_config(k, v) VALUES ('pgsz', 1)",
    "DELETE FROM notes_fts_docsize",
])
def test_tenant_sql_cannot_write_fts_shadow_tables(fts_guard: g.Guard, sql: str) -> None:
    defensive = fts_guard.conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1)
    with pytest.raises(Invalid if defensive and not sql.startswith("INSERT") else Forbidden):
        g.run(fts_guard, g.Mode.DATA, sql)  # (SQLite checks UPDATE and DELETE before the Guard sees them)
    # the index still works, and keeps following the table through its triggers
    g.run(fts_guard, g.Mode.DATA, "UPDATE notes SET title = 'goodbye' WHERE id = 1")
    g.run(fts_guard, g.Mode.DATA, "DELETE FROM notes WHERE id = 2")
    _, hits = g.run(fts_guard, g.Mode.READ, "SELECT rowid FROM notes_fts WHERE notes_fts MATCH 'hello' ORDER BY rowid")
    assert [r[0] for r in hits] == list(range(3, 41))
    assert g.run(fts_guard, g.Mode.READ, "SELECT rowid FROM notes_fts WHERE notes_fts MATCH 'goodbye'")[1] == [(1,)]


def test_fts_shadow_names_are_reserved(fts_guard: g.Guard) -> None:
    with pytest.raises(BadRequest):
        tables.create_sql_from_columns("things_fts_data", [{"name": "x"}])
    with pytest.raises(Invalid):
        tables.create(fts_guard.conn, fts_guard, "CREATE TABLE other_fts_idx(segid, term, pgno)")


# I1: a table made from a SELECT reads only what tenant SQL may read

@pytest.mark.parametrize("sql", [
    "CREATE TABLE stolen AS SELECT sql FROM sqlite_master",
    "CREATE TABLE stolen AS SELECT name FROM sqlite_schema",
    "CREATE TABLE stolen AS SELECT count(*) AS n FROM sqlite_master",
    "CREATE TABLE stolen AS SELECT * FROM dbstat",
    "CREATE TABLE stolen AS SELECT * FROM pragma_table_info('_wce_users')",
    "CREATE TABLE stolen AS SELECT * FROM _wce_users",
])
def test_create_table_as_select_reads_no_internals(guard: g.Guard, sql: str) -> None:
    with pytest.raises(Invalid):
        tables.create(guard.conn, guard, sql)
    assert guard.conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'stolen'").fetchone() == (0,)
    assert tables.create(guard.conn, guard, "CREATE TABLE copied AS SELECT id, body FROM notes") == "copied"
