"""The authorizer fence around tenant SQL: every way to reach `_wce_` tables or escape is refused."""

from __future__ import annotations

import apsw
import pytest

from wce.core import sqlguard as g
from wce.core.errors import Forbidden, Invalid


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
