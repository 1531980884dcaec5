"""Reading and writing rows of tenant tables under grants and row policies.

Every value reaches SQLite as a bound parameter; every column name is checked against the
table's schema before it is quoted into SQL. Statements carrying policy expressions run under
wce.core.sqlguard (READ for reads, DATA for writes). Writes of one request are one transaction
together with their audit rows; a policy `check` that fails rolls the whole request back (403).
A write answers the row as written only to a caller who may select it (the grant, and the select
policy on that row), as PostgreSQL's RETURNING needs SELECT; anyone else gets the row's key alone.

Cursors and integers come from clients: a cursor is checked against the shape this module hands
out before any of it is bound, and every integer is range-checked (parse_int), so a crafted one
is a 400, never an error deeper down.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from . import audit, sqlguard
from .db import transaction
from .errors import BadRequest, Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthenticated
from .permissions import Access, Actor, Rule, quote
from .tables import FTS_SUFFIX, Table

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_BULK = 1000
OPS = {"": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "ne": "!=", "like": "LIKE", "in": "IN"}
KEY = "__wce_key"


def require(access: Access, actor: Actor, table: str, action: str) -> Rule:
    """The rule for actor's action on table, or 401 (anonymous) / 403 (signed in) without a grant."""
    rule = access.rule(actor.role, table, action)
    if not rule.granted:
        if actor.role == "anon":
            raise Unauthenticated(f"sign in to {action} rows of {table}")
        raise Forbidden(f"no {action} permission on {table}")
    return rule


@dataclass(slots=True)
class ListQuery:
    """A parsed `GET rows` query string."""

    filters: list[tuple[str, str, str]] = field(default_factory=list)
    order: str | None = None
    desc: bool = False
    limit: int = DEFAULT_LIMIT
    after: Any = None
    search: str | None = None


def parse_query(table: Table, pairs: Sequence[tuple[str, str]]) -> ListQuery:
    """Check every parameter against the table: unknown columns and operators are 400."""
    q = ListQuery()
    for k, v in pairs:
        if k == "limit":
            q.limit = parse_int(v, BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}"), lo=1, hi=MAX_LIMIT)
        elif k == "order":
            col = v[1:] if v.startswith("-") else v
            if col not in table.column_names:
                raise BadRequest(f"cannot order by {col!r}: no such column")
            q.order, q.desc = col, v.startswith("-")
        elif k == "after":
            q.after = _decode_cursor(v)
        elif k == "search":
            if not table.fts:
                raise BadRequest(f"table {table.name} has no full-text index")
            q.search = v
        else:
            col, _, op = k.partition("__")
            if col not in table.column_names:
                raise BadRequest(f"unknown filter {k!r}: no column {col!r}")
            if op not in OPS:
                raise BadRequest(f"unknown filter operator {op!r}; use one of gt, gte, lt, lte, ne, like, in")
            q.filters.append((col, OPS[op], v))
    if q.after is not None:
        q.after = _check_cursor(q.after, "search" if q.search is not None
                                else "order" if q.order and q.order != table.key else "key")
    return q


def parse_int(raw: str, error: Exception, *, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
    """An integer from lo to hi (by default any 64-bit one) from a path segment or a query
    parameter, or the given error: the one place client integers are checked, so none overflows
    deeper down."""
    try:
        value = int(raw)
    except ValueError:
        raise error from None
    if not lo <= value <= hi:
        raise error
    return value


def _encode_cursor(value: Any) -> str:
    if isinstance(value, bytes):
        value = {"b": base64.b64encode(value).decode()}
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> Any:
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise BadRequest("bad cursor") from None
    return value


def _check_cursor(value: Any, kind: str) -> Any:
    """A decoded cursor if it has the shape this module hands out for that kind of listing,
    with every value one SQLite can bind; else BadRequest. "search": {"o": offset}; "order":
    [last value, last key]; "key": [anything, last key] or the last key alone (read as
    [None, key])."""
    if kind == "search":
        if (not isinstance(value, dict) or set(value) != {"o"} or type(value["o"]) is not int
                or not 0 <= value["o"] < 2**63):
            raise BadRequest("bad cursor")
        return value
    if kind == "order":
        if not isinstance(value, list) or len(value) != 2:
            raise BadRequest("bad cursor")
        return [_cursor_value(value[0]), _cursor_value(value[1])]
    if isinstance(value, list) and len(value) == 2:
        value = value[1]
    return [None, _cursor_value(value)]


def _cursor_value(v: Any) -> Any:
    """One value of a cursor as SQLite will get it: null, a 64-bit integer, a real, text, or a
    blob written {"b": base64}; anything else is BadRequest."""
    if v is None or isinstance(v, (str, float)):
        return v
    if type(v) is int and -(2**63) <= v < 2**63:
        return v
    if isinstance(v, dict) and set(v) == {"b"} and isinstance(v["b"], str):
        try:
            return base64.b64decode(v["b"], validate=True)
        except (binascii.Error, ValueError):
            pass
    raise BadRequest("bad cursor")


def to_json(value: Any) -> Any:
    """SQLite value -> JSON value: blobs as base64, non-finite reals as null."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def affinity(declared: str) -> str:
    """The JSON-facing kind of a declared column type: integer, real, text, blob or any."""
    t = declared.upper()
    if "INT" in t:
        return "integer"
    if any(k in t for k in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in t:
        return "blob"
    if any(k in t for k in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
        return "real"
    return "any"


def column_value(value: Any, column: str, kind: str) -> Any:
    """A JSON value for a column of the given kind, checked: integers for INTEGER columns, numbers
    for REAL, strings (or JSON objects/arrays, stored as JSON text) for TEXT, base64 strings for
    BLOB; ANY takes any JSON value. null fits every column (NOT NULL is SQLite's to enforce)."""
    if value is None:
        return None
    if kind == "integer" and not isinstance(value, int):
        raise BadRequest(f"{column}: expects an integer")
    if kind == "real" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise BadRequest(f"{column}: expects a number")
    if kind == "text" and not isinstance(value, (str, dict, list)):
        raise BadRequest(f"{column}: expects a string")
    if kind == "blob":
        if not isinstance(value, str):
            raise BadRequest(f"{column}: expects base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{column}: expects base64 text") from None
    return to_sql(value, column)


def to_sql(value: Any, column: str) -> Any:
    """JSON value -> SQLite value: objects and arrays are stored as JSON text."""
    if value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise BadRequest(f"{column}: integer out of range")
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    raise BadRequest(f"{column}: unsupported value")


class Rows:
    """Row operations of one cenv for one caller."""

    def __init__(self, conn: apsw.Connection, guard: sqlguard.Guard, access: Access, actor: Actor,
                 ip: str | None = None) -> None:
        self.conn, self.guard, self.access, self.actor, self.ip = conn, guard, access, actor, ip

    def _params(self) -> dict[str, Any]:
        return self.actor.params()

    def _key_value(self, table: Table, raw: str) -> Any:
        if table.key == "rowid" and not table.has_rowid:
            raise BadRequest(f"rows of {table.name} have no single-column key to address them by")
        col = next((c for c in table.columns if c.name == table.key), None)
        if table.key == "rowid" or (col and affinity(col.type) == "integer"):
            return parse_int(raw, NotFound("no such row"))
        return raw

    def _select(self, table: Table) -> str:
        key = "rowid" if table.key == "rowid" else quote(table.key)
        return f"SELECT {key} AS {KEY}, * FROM {quote(table.name)}"

    def _shape(self, table: Table, cols: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
        out = {c: to_json(v) for c, v in zip(cols[1:], row[1:], strict=True)}
        if table.key == "rowid":
            out["rowid"] = row[0]
        return out

    def _run(self, mode: sqlguard.Mode, sql: str, params: dict[str, Any], scope: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        return sqlguard.run(self.guard, mode, sql, params, scope=f"{self.actor.role}:{scope}")

    # reads

    def list(self, table: Table, q: ListQuery) -> tuple[list[dict[str, Any]], str | None]:
        """One page of rows the caller may see, and the cursor of the next page (or None)."""
        rule = require(self.access, self.actor, table.name, "select")
        params = self._params()
        where: list[str] = []
        if rule.using:
            where.append(rule.using)
        for i, (col, op, value) in enumerate(q.filters):
            if op == "IN":
                names = []
                for j, part in enumerate(value.split(",")):
                    params[f"__f{i}_{j}"] = part
                    names.append(f":__f{i}_{j}")
                where.append(f"{quote(col)} IN ({', '.join(names)})")
            else:
                params[f"__f{i}"] = value
                where.append(f"{quote(col)} {op} :__f{i}")
        key = "rowid" if table.key == "rowid" else quote(table.key)
        if q.search is not None:
            return self._search(table, q, where, params)
        if q.order and q.order != table.key:
            col = quote(q.order)
            direction = "DESC" if q.desc else "ASC"
            order_by = f"{col} {direction}, {key} {direction}"
            if q.after is not None:
                last, last_key = q.after
                params["__cv"], params["__ck"] = last, last_key
                cmp = "<" if q.desc else ">"
                if last is None:  # NULLs sort first ascending, last descending
                    where.append(f"({col} IS NULL AND {key} {cmp} :__ck)" + ("" if q.desc else f" OR {col} IS NOT NULL"))
                else:
                    tail = f" OR {col} IS NULL" if q.desc else ""
                    where.append(f"({col} {cmp} :__cv OR ({col} = :__cv AND {key} {cmp} :__ck){tail})")
        else:
            direction = "DESC" if q.desc else "ASC"
            order_by = f"{key} {direction}"
            if q.after is not None:
                params["__ck"] = q.after[1]
                where.append(f"{key} {'<' if q.desc else '>'} :__ck")
        sql = self._select(table)
        if where:
            sql += " WHERE " + " AND ".join(f"({w})" for w in where)
        sql += f" ORDER BY {order_by} LIMIT {q.limit + 1}"
        cols, rows = self._read(sql, params, "list")
        nxt = None
        if len(rows) > q.limit:
            rows = rows[: q.limit]
            last = rows[-1]
            if q.order and q.order != table.key:
                nxt = _encode_cursor([_cursorable(last[cols.index(q.order)]), _cursorable(last[0])])
            else:
                nxt = _encode_cursor([None, _cursorable(last[0])])
        return [self._shape(table, cols, r) for r in rows], nxt

    def _search(self, table: Table, q: ListQuery, where: list[str], params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        offset = q.after["o"] if q.after is not None else 0
        params["__q"] = q.search
        fts = quote(table.name + FTS_SUFFIX)
        sql = (f"WITH __wce_hits AS (SELECT rowid AS __wce_r, rank AS __wce_rank FROM {fts} WHERE {fts} MATCH :__q) "
               f"SELECT {quote(table.name)}.rowid AS {KEY}, {quote(table.name)}.* FROM {quote(table.name)} "
               f"JOIN __wce_hits ON __wce_hits.__wce_r = {quote(table.name)}.rowid")
        if where:
            sql += " WHERE " + " AND ".join(f"({w})" for w in where)
        sql += f" ORDER BY __wce_hits.__wce_rank LIMIT {q.limit + 1} OFFSET {offset}"
        try:
            cols, rows = self._read(sql, params, "search")
        except Invalid as exc:
            raise BadRequest(f"bad search: {exc.message}") from None
        nxt = None
        if len(rows) > q.limit:
            rows = rows[: q.limit]
            nxt = _encode_cursor({"o": offset + q.limit})
        if table.key != "rowid" and rows:
            cols, rows = self._rekey(table, cols, rows)
        return [self._shape(table, cols, r) for r in rows], nxt

    def _rekey(self, table: Table, cols: list[str], rows: list[tuple[Any, ...]]) -> tuple[list[str], list[tuple[Any, ...]]]:
        i = cols.index(table.key, 1)
        return cols, [(r[i], *r[1:]) for r in rows]

    def _read(self, sql: str, params: dict[str, Any], scope: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            return self._run(sqlguard.Mode.READ, sql, params, scope)
        except Forbidden as exc:  # a policy reaching for what it may not read
            raise Forbidden(f"a row policy was refused: {exc.message}") from None

    def get(self, table: Table, raw_key: str) -> dict[str, Any]:
        """One row, or 404 if it is absent or hidden by policy."""
        rule = require(self.access, self.actor, table.name, "select")
        params = self._params()
        params["__k"] = self._key_value(table, raw_key)
        key = "rowid" if table.key == "rowid" else quote(table.key)
        sql = f"{self._select(table)} WHERE {key} = :__k"
        if rule.using:
            sql += f" AND {rule.using}"
        cols, rows = self._read(sql, params, "get")
        if not rows:
            raise NotFound("no such row")
        return self._shape(table, cols, rows[0])

    # writes

    def _columns(self, table: Table, row: Any) -> dict[str, Any]:
        if not isinstance(row, dict) or not row:
            raise BadRequest("a row must be a non-empty JSON object")
        out = {}
        kinds = {c.name: affinity(c.type) for c in table.columns}
        for k, v in row.items():
            if k not in kinds:
                raise BadRequest(f"no column {k!r} in {table.name}")
            out[k] = column_value(v, k, kinds[k])
        return out

    def _holds(self, table: Table, expr: str, key_value: Any, scope: str) -> bool:
        """Whether a policy expression is true of the row with that key, as it is now."""
        params = self._params()
        params["__k"] = key_value
        key = "rowid" if table.key == "rowid" else quote(table.key)
        _, ok = self._read(f"SELECT 1 FROM {quote(table.name)} WHERE {key} = :__k AND {expr}", params, scope)
        return bool(ok)

    def _check(self, table: Table, rule: Rule, key_value: Any, what: str) -> None:
        if rule.check is not None and not self._holds(table, rule.check, key_value, f"check:{what}"):
            raise Forbidden(f"the row violates the {what} policy of {table.name}")

    def _answer(self, table: Table, cols: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
        """What a write answers: the row as written if the caller may select it (the grant, and
        the select policy on the row), else its key alone (as PostgreSQL's RETURNING needs SELECT)."""
        rule = self.access.rule(self.actor.role, table.name, "select")
        if rule.granted and (rule.using is None or self._holds(table, rule.using, row[0], "answer")):
            return self._shape(table, cols, row)
        return {table.key: to_json(row[0])}

    def insert(self, table: Table, rows: list[Any]) -> list[dict[str, Any]]:
        """Insert one or more rows in one transaction; each must pass the insert check. The
        answer: each row as stored, or its key alone (see _answer)."""
        rule = require(self.access, self.actor, table.name, "insert")
        if not rows:
            raise BadRequest("nothing to insert")
        if len(rows) > MAX_BULK:
            raise BadRequest(f"at most {MAX_BULK} rows at once")
        prepared = [self._columns(table, r) for r in rows]
        out = []
        with transaction(self.conn):
            for values in prepared:
                names = list(values)
                params = {f"__v{i}": values[n] for i, n in enumerate(names)}
                sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
                       f"VALUES ({', '.join(f':__v{i}' for i in range(len(names)))}) "
                       f"RETURNING {'rowid' if table.key == 'rowid' else quote(table.key)} AS {KEY}, *")
                cols, got = self._write(sql, params, f"ins:{len(names)}")
                key_value = got[0][0]
                self._check(table, rule, key_value, "insert")
                audit.record(self.conn, "row.insert", actor=self.actor.username or self.actor.role,
                             target=f"{table.name}/{key_value}", detail={"columns": names}, ip=self.ip)
                out.append(self._answer(table, cols, got[0]))
        return out

    def update(self, table: Table, raw_key: str, changes: Any) -> dict[str, Any]:
        """Change some columns of a row the caller may update; the result must pass the check.
        The answer: the row as changed, or its key alone (see _answer)."""
        rule = require(self.access, self.actor, table.name, "update")
        values = self._columns(table, changes)
        params = self._params()
        params.update({f"__v{i}": v for i, v in enumerate(values.values())})
        params["__k"] = self._key_value(table, raw_key)
        key = "rowid" if table.key == "rowid" else quote(table.key)
        sets = ", ".join(f"{quote(n)} = :__v{i}" for i, n in enumerate(values))
        sql = f"UPDATE {quote(table.name)} SET {sets} WHERE {key} = :__k"
        if rule.using:
            sql += f" AND {rule.using}"
        sql += f" RETURNING {key} AS {KEY}, *"
        with transaction(self.conn):
            cols, got = self._write(sql, params, f"upd:{len(values)}")
            if not got:
                raise NotFound("no such row")
            self._check(table, rule, got[0][0], "update")
            audit.record(self.conn, "row.update", actor=self.actor.username or self.actor.role,
                         target=f"{table.name}/{got[0][0]}", detail={"columns": list(values)}, ip=self.ip)
            return self._answer(table, cols, got[0])

    def delete(self, table: Table, raw_key: str) -> None:
        """Delete a row the caller may delete; 404 if absent or hidden."""
        rule = require(self.access, self.actor, table.name, "delete")
        params = self._params()
        params["__k"] = self._key_value(table, raw_key)
        key = "rowid" if table.key == "rowid" else quote(table.key)
        sql = f"DELETE FROM {quote(table.name)} WHERE {key} = :__k"
        if rule.using:
            sql += f" AND {rule.using}"
        sql += f" RETURNING {key}"
        with transaction(self.conn):
            _, got = self._write(sql, params, "del")
            if not got:
                raise NotFound("no such row")
            audit.record(self.conn, "row.delete", actor=self.actor.username or self.actor.role,
                         target=f"{table.name}/{got[0][0]}", ip=self.ip)

    def _write(self, sql: str, params: dict[str, Any], scope: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            return self._run(sqlguard.Mode.DATA, sql, params, scope)
        except apsw.ConstraintError as exc:
            msg = str(exc).removeprefix("ConstraintError: ")
            if "UNIQUE" in msg:
                raise Conflict(msg) from None
            raise Invalid(msg) from None
        except apsw.FullError:
            raise TooLarge("the cenv's database has reached its size limit") from None


def _cursorable(value: Any) -> Any:
    return {"b": base64.b64encode(value).decode()} if isinstance(value, bytes) else value
