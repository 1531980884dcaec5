"""Tenant tables: what exists (columns, types, primary key, full-text index), creating, dropping.

Names are checked against a strict identifier rule and always quoted when put into SQL; `_wce_`
and `sqlite_` names are refused, and so are the names of a full-text index's shadow tables. A full-text index over chosen text columns is an FTS5 table
`{table}_fts` in external-content mode, kept in step by three triggers that we write ourselves
(tenants cannot create triggers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import apsw
import apsw.ext

from . import sqlguard
from .errors import BadRequest, Conflict, Invalid, NotFound, WceError
from .permissions import quote

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
TYPES = {"INTEGER", "REAL", "TEXT", "BLOB", "NUMERIC", "ANY"}
FTS_SUFFIX = "_fts"


def check_name(name: object, what: str = "name") -> str:
    """A safe identifier for a table or column, or BadRequest."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest(f"{what} must be 1-63 letters, digits or '_', not starting with a digit")
    low = name.lower()
    if low.startswith("_wce_") or low.startswith("sqlite_"):
        raise BadRequest(f"{what} {name!r} is reserved (names starting with _wce_ or sqlite_)")
    return name


@dataclass(frozen=True, slots=True)
class Column:
    """One column as reported to users."""

    name: str
    type: str
    not_null: bool
    default: Any
    primary_key: bool

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "not_null": self.not_null, "default": self.default,
                "primary_key": self.primary_key}


@dataclass(frozen=True, slots=True)
class Table:
    """A tenant table: its columns, its key for the rows routes, its full-text columns."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    key: str  # the column `rows/{pk}` addresses: the single primary key, else rowid
    has_rowid: bool
    fts: tuple[str, ...] = field(default=())

    @property
    def column_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "columns": [c.public() for c in self.columns],
                "primary_key": list(self.primary_key), "full_text": list(self.fts) or None}


class Catalog:
    """The tenant tables of a cenv, read from SQLite's schema and cached until DDL changes it."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self._tables: dict[str, Table] | None = None

    def invalidate(self) -> None:
        """Forget the cached schema (after any DDL)."""
        self._tables = None

    def all(self) -> dict[str, Table]:
        """Every tenant table by name."""
        if self._tables is None:
            self._tables = self._load()
        return self._tables

    def get(self, name: str) -> Table:
        """One table, or NotFound (also for `_wce_` and FTS tables, which are not tenant tables)."""
        t = self.all().get(name)
        if t is None:
            raise NotFound(f"no table {name!r}")
        return t

    def _load(self) -> dict[str, Table]:
        names = [r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            " AND name NOT LIKE '\\_wce\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name")]
        fts_names = {r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'")}
        shadow = {f"{f}_{s}" for f in fts_names for s in ("data", "idx", "content", "docsize", "config")}
        out: dict[str, Table] = {}
        for name in names:
            if name in shadow:
                continue
            cols = []
            pk: list[tuple[int, str]] = []
            for _cid, cname, ctype, notnull, dflt, pkpos, hidden in self.conn.execute(f"PRAGMA table_xinfo({quote(name)})"):
                if hidden == 1:
                    continue
                cols.append(Column(cname, ctype or "", bool(notnull), dflt, bool(pkpos)))
                if pkpos:
                    pk.append((pkpos, cname))
            pk_names = tuple(n for _, n in sorted(pk))
            has_rowid = self.conn.execute(
                "SELECT sql NOT LIKE '%WITHOUT ROWID%' FROM sqlite_schema WHERE name = ?", (name,)).fetchone()[0]
            key = pk_names[0] if len(pk_names) == 1 else "rowid"
            fts: tuple[str, ...] = ()
            if f"{name}{FTS_SUFFIX}" in fts_names:
                fts = tuple(r[1] for r in self.conn.execute(f"PRAGMA table_info({quote(name + FTS_SUFFIX)})"))
            out[name] = Table(name, tuple(cols), pk_names, key, bool(has_rowid), fts)
        return out


def create_sql_from_columns(name: str, columns: Any) -> str:
    """The CREATE TABLE for a column list, every name checked and quoted, every default a literal."""
    check_name(name, "table name")
    if sqlguard.is_fts_shadow(name):
        raise BadRequest(f"table name {name!r} is reserved for a full-text index")
    if not isinstance(columns, list) or not columns:
        raise BadRequest("columns must be a non-empty list")
    if len(columns) > 200:
        raise BadRequest("at most 200 columns")
    parts = []
    seen: set[str] = set()
    pks = [c for c in columns if isinstance(c, dict) and c.get("primary_key")]
    for col in columns:
        if not isinstance(col, dict):
            raise BadRequest("each column must be an object")
        cname = check_name(col.get("name"), "column name")
        if cname.lower() in seen:
            raise BadRequest(f"duplicate column {cname!r}")
        seen.add(cname.lower())
        ctype = str(col.get("type", "ANY")).upper()
        if ctype not in TYPES:
            raise BadRequest(f"column type must be one of {', '.join(sorted(TYPES))}")
        sql = f"{quote(cname)} {ctype}"
        if col.get("primary_key") and len(pks) == 1:
            sql += " PRIMARY KEY"
        if col.get("not_null"):
            sql += " NOT NULL"
        if col.get("unique"):
            sql += " UNIQUE"
        if "default" in col:
            sql += f" DEFAULT {literal(col['default'])}"
        ref = col.get("references")
        if ref is not None:
            if not isinstance(ref, str):
                raise BadRequest("references must be 'table' or 'table.column'")
            rt, _, rc = ref.partition(".")
            sql += f" REFERENCES {quote(check_name(rt, 'referenced table'))}"
            if rc:
                sql += f"({quote(check_name(rc, 'referenced column'))})"
        parts.append(sql)
    if len(pks) > 1:
        parts.append("PRIMARY KEY (" + ", ".join(quote(c["name"]) for c in pks) + ")")
    return f"CREATE TABLE {quote(name)} (" + ", ".join(parts) + ")"


def literal(value: Any) -> str:
    """An SQL literal for a JSON default value."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise BadRequest("a default must be a string, number, boolean or null")


def create(conn: apsw.Connection, guard: sqlguard.Guard, sql: str) -> str:
    """Run one tenant CREATE TABLE / CREATE INDEX under the DDL guard; the created object's name."""
    head = re.sub(r"\s+", " ", sql.strip()).upper()
    if not (head.startswith("CREATE TABLE ") or head.startswith("CREATE INDEX ")
            or head.startswith("CREATE UNIQUE INDEX ") or head.startswith("CREATE TABLE IF NOT EXISTS ")):
        raise Invalid("only one CREATE TABLE or CREATE INDEX statement is allowed")
    with guard.untrusted(sqlguard.Mode.DDL):
        try:
            info = apsw.ext.query_info(conn, sqlguard.marked(sql, sqlguard.Mode.DDL, "probe"))
        except apsw.AuthError:
            raise Invalid(guard.denied or "not allowed") from None
        except apsw.SQLError as exc:
            raise Invalid(str(exc).removeprefix("SQLError: ")) from None
    if info.query_remaining and info.query_remaining.strip(" \t\r\n;"):
        raise Invalid("only one statement is allowed")
    before = {(r[0], r[1]) for r in conn.execute("SELECT name, type FROM sqlite_schema")}
    try:
        sqlguard.run(guard, sqlguard.Mode.DDL, sql, scope="create")
    except WceError as exc:
        raise Invalid(exc.message) from None
    after = {(r[0], r[1]) for r in conn.execute("SELECT name, type FROM sqlite_schema")}
    new = sorted((typ != "table", name) for name, typ in after - before if not name.startswith("sqlite_autoindex_"))
    if not new:
        raise Conflict("that table or index already exists")
    return new[0][1]


def add_fts(conn: apsw.Connection, table: Table, columns: Any) -> None:
    """Create `{table}_fts` over text columns, filled now and kept in step by triggers."""
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise BadRequest("full_text must be a list of column names")
    if not table.has_rowid:
        raise BadRequest("full-text search needs a table with a rowid (not WITHOUT ROWID)")
    for c in columns:
        if c not in table.column_names:
            raise BadRequest(f"no column {c!r} in {table.name}")
    t, f = quote(table.name), quote(table.name + FTS_SUFFIX)
    cols = ", ".join(quote(c) for c in columns)
    new_cols = ", ".join(f"new.{quote(c)}" for c in columns)
    old_cols = ", ".join(f"old.{quote(c)}" for c in columns)
    fname = table.name + FTS_SUFFIX
    conn.execute(f"CREATE VIRTUAL TABLE {f} USING fts5({cols}, content={quote(table.name)}, content_rowid='rowid')")
    conn.execute(f"INSERT INTO {f}(rowid, {cols}) SELECT rowid, {cols} FROM {t}")
    conn.execute(f"CREATE TRIGGER {quote(fname + '_ai')} AFTER INSERT ON {t} BEGIN "
                 f"INSERT INTO {f}(rowid, {cols}) VALUES (new.rowid, {new_cols}); END")
    conn.execute(f"CREATE TRIGGER {quote(fname + '_ad')} AFTER DELETE ON {t} BEGIN "
                 f"INSERT INTO {f}({f}, rowid, {cols}) VALUES ('delete', old.rowid, {old_cols}); END")
    conn.execute(f"CREATE TRIGGER {quote(fname + '_au')} AFTER UPDATE ON {t} BEGIN "
                 f"INSERT INTO {f}({f}, rowid, {cols}) VALUES ('delete', old.rowid, {old_cols}); "
                 f"INSERT INTO {f}(rowid, {cols}) VALUES (new.rowid, {new_cols}); END")


def drop(conn: apsw.Connection, table: Table) -> None:
    """Drop a table, its full-text index, grants and policies."""
    if table.fts:
        conn.execute(f"DROP TABLE IF EXISTS {quote(table.name + FTS_SUFFIX)}")
    conn.execute(f"DROP TABLE {quote(table.name)}")
    conn.execute("DELETE FROM _wce_table_permissions WHERE table_name = ?", (table.name,))
    conn.execute("DELETE FROM _wce_row_policies WHERE table_name = ?", (table.name,))
