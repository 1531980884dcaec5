"""Caps only the operator can raise, in process: a cenv's settings are at most its ceilings, the
exceptions table is out of every tenant's reach, and an import drops it."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from wce.core import backup, caps, cenv, db, schema, settings, sqlguard
from wce.core.errors import BadRequest, Forbidden, Invalid

CEILINGS = {"memory_mb": 256, "cpu_ms_per_request": 2000, "max_db_mb": 1024}


@pytest.fixture
def conn(tmp_path: Path) -> apsw.Connection:
    c = db.connect(str(tmp_path / "c.sqlite"), create=True)
    schema.migrate(c)
    c.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    return c


def test_a_cap_above_its_ceiling_is_refused_with_the_ceiling_named() -> None:
    with pytest.raises(Invalid) as info:
        settings.validate("memory_mb", 257, CEILINGS)
    assert info.value.message == "memory_mb may be at most 256 on this server"
    with pytest.raises(Invalid):
        settings.validate("max_db_mb", 1 << 20, CEILINGS)
    assert settings.validate("cpu_ms_per_request", 2000, CEILINGS) == 2000
    assert settings.validate("memory_mb", 64, CEILINGS) == 64
    for bad in (63, True, "128", 12.5):  # malformed stays 400
        with pytest.raises(BadRequest):
            settings.validate("memory_mb", bad, CEILINGS)


def test_stored_caps_are_clamped_and_unset_ones_are_the_ceiling(conn: apsw.Connection) -> None:
    assert {k: settings.read(conn, CEILINGS)[k] for k in CEILINGS} == CEILINGS
    conn.execute("INSERT INTO _wce_config(key, value) VALUES ('memory_mb', '16384'), ('max_db_mb', '10')")
    got = settings.read(conn, CEILINGS)
    assert (got["memory_mb"], got["cpu_ms_per_request"], got["max_db_mb"]) == (256, 2000, 10)


def test_exceptions_replace_the_server_ceilings(conn: apsw.Connection) -> None:
    assert caps.ceilings(CEILINGS, caps.exceptions(conn)) == CEILINGS
    caps.set_exceptions(conn, {"memory_mb": 512, "max_db_mb": 100}, actor="cli", ip="cli")
    assert caps.exceptions(conn) == {"memory_mb": 512, "max_db_mb": 100}
    assert caps.ceilings(CEILINGS, caps.exceptions(conn)) == {"memory_mb": 512, "cpu_ms_per_request": 2000,
                                                              "max_db_mb": 100}
    conn.execute("INSERT OR REPLACE INTO _wce_caps(key, value) VALUES ('cpu_ms_per_request', 'lots'), ('other', '1')")
    assert caps.exceptions(conn) == {"memory_mb": 512, "max_db_mb": 100}  # hand-edited junk is ignored
    with pytest.raises(BadRequest):
        caps.set_exceptions(conn, {"memory_mb": 1}, actor="cli", ip="cli")
    caps.clear_exceptions(conn, actor="cli", ip="cli")
    assert caps.exceptions(conn) == {}
    actions = [a for (a,) in conn.execute("SELECT action FROM _wce_audit_log ORDER BY id")]
    assert actions == ["caps.update", "caps.reset"]


def test_a_file_older_than_the_table_has_no_exceptions(tmp_path: Path) -> None:
    c = apsw.Connection(str(tmp_path / "old.sqlite"))
    for sql in schema.MIGRATIONS[:2]:
        c.execute(sql)
    assert caps.exceptions(c) == {}


TENANT_SQL = [
    "SELECT * FROM _wce_caps",
    "SELECT * FROM main._WCE_CAPS",
    "SELECT (SELECT value FROM _wce_caps) FROM notes",
    "WITH x AS (SELECT * FROM _wce_caps) SELECT * FROM x",
]
TENANT_WRITES = [
    "INSERT INTO _wce_caps(key, value) VALUES ('memory_mb', '16384')",
    "INSERT OR REPLACE INTO _wce_caps VALUES ('memory_mb', '16384')",
    "UPDATE _wce_caps SET value = '16384'",
    "DELETE FROM _wce_caps",
    "INSERT INTO notes(body) SELECT value FROM _wce_caps",
]


@pytest.mark.parametrize("sql", TENANT_SQL + TENANT_WRITES)
def test_tenant_sql_never_reaches_the_caps_table(conn: apsw.Connection, sql: str) -> None:
    guard = sqlguard.Guard(conn)
    caps.set_exceptions(conn, {"memory_mb": 300}, actor="cli", ip="cli")
    for mode in (sqlguard.Mode.READ, sqlguard.Mode.DATA):
        with pytest.raises(Forbidden):
            sqlguard.run(guard, mode, sql)
    assert caps.exceptions(conn) == {"memory_mb": 300}


@pytest.mark.parametrize("sql", ["CREATE TABLE stolen AS SELECT * FROM _wce_caps",
                                 "CREATE TABLE _wce_caps2(key, value)",
                                 "CREATE INDEX i ON _wce_caps(value)"])
def test_tenant_ddl_never_reaches_the_caps_table(conn: apsw.Connection, sql: str) -> None:
    guard = sqlguard.Guard(conn)
    with pytest.raises(Forbidden):
        sqlguard.run(guard, sqlguard.Mode.DDL, sql)


def test_an_import_drops_the_exceptions_it_carries(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cid, new = "a" * 26, "b" * 26
    cenv.create(src, cid, "admin", "x")
    c = db.connect(str(src / f"{cid}.sqlite"))
    caps.set_exceptions(c, {"memory_mb": 16384, "max_db_mb": 1 << 20}, actor="forger", ip=None)
    c.close()
    data = tmp_path / "data"
    data.mkdir()
    backup.import_file(data, src / f"{cid}.sqlite", new)
    imported = db.connect(str(data / f"{new}.sqlite"))
    assert caps.exceptions(imported) == {}
    imported.close()
