"""Endpoints and triggers as stored in `_wce_scripts`, validated and audited.

Saving compiles the source (422 with line and column if it does not), checks the endpoint's path
pattern and that it does not clash with another endpoint (409), and writes one audit row.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import apsw

from .. import audit
from ..db import transaction
from ..errors import BadRequest, Conflict, NotFound
from .routing import Pattern, parse_pattern

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ACCESS = ("public", "user", "admin")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FIELDS = "id, kind, name, method, path, tables, source, access, spec, updated_at"


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    sid, kind, name, method, path, tables, source, access, spec, updated = r
    if kind == "endpoint":
        return {"id": sid, "method": method, "path": path, "source": source, "access": access,
                "spec": json.loads(spec) if spec else None, "updated_at": updated}
    return {"id": sid, "name": name, "tables": json.loads(tables or "[]"), "source": source, "updated_at": updated}


def list_scripts(conn: apsw.Connection, kind: str) -> list[dict[str, Any]]:
    """Every endpoint or trigger."""
    return [_row(r) for r in conn.execute(f"SELECT {FIELDS} FROM _wce_scripts WHERE kind = ? ORDER BY id", (kind,))]


def get_script(conn: apsw.Connection, kind: str, script_id: int) -> dict[str, Any]:
    """One endpoint or trigger, or NotFound."""
    r = conn.execute(f"SELECT {FIELDS} FROM _wce_scripts WHERE kind = ? AND id = ?", (kind, script_id)).fetchone()
    if r is None:
        raise NotFound(f"no such {kind}")
    return _row(r)


def _endpoint_fields(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    extra = set(body) - {"method", "path", "source", "access", "spec"}
    if extra:
        raise BadRequest(f"unknown fields: {', '.join(sorted(extra))}")
    method = body.get("method")
    if method not in METHODS:
        raise BadRequest(f"method must be one of {', '.join(METHODS)}")
    parse_pattern(body.get("path"))  # BadRequest if malformed
    access = body.get("access", "admin")
    if access not in ACCESS:
        raise BadRequest("access must be public, user or admin")
    spec = body.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise BadRequest("spec must be an OpenAPI operation object or null")
    if not isinstance(body.get("source"), str):
        raise BadRequest("source must be a string")
    return {"method": method, "path": body["path"], "source": body["source"], "access": access, "spec": spec}


def _trigger_fields(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    extra = set(body) - {"name", "tables", "source"}
    if extra:
        raise BadRequest(f"unknown fields: {', '.join(sorted(extra))}")
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest("name must be 1-64 letters, digits, '_', '.', '-'")
    tables = body.get("tables")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, str) and t for t in tables):
        raise BadRequest("tables must be a non-empty list of table names")
    if any(t.lower().startswith("_wce_") for t in tables):
        raise BadRequest("triggers cannot watch _wce_ tables")
    if not isinstance(body.get("source"), str):
        raise BadRequest("source must be a string")
    return {"name": name, "tables": sorted(set(tables)), "source": body["source"]}


def _clash(conn: apsw.Connection, method: str, pattern: Pattern, except_id: int | None) -> None:
    for sid, m, path in conn.execute("SELECT id, method, path FROM _wce_scripts WHERE kind = 'endpoint'"):
        if sid != except_id and m == method and parse_pattern(path).shape == pattern.shape:
            raise Conflict(f"{method} {path} (endpoint {sid}) already answers the same requests")


def save(conn: apsw.Connection, kind: str, body: Any, script_id: int | None, *, actor: str, ip: str | None,
         compile_check: Callable[[str, str], None] = lambda src, kind: None) -> dict[str, Any]:
    """Create (script_id None) or replace an endpoint or trigger.

    `compile_check(source, kind)` must raise ScriptSyntaxError for a source that does not compile;
    the worker passes one that compiles in a throw-away child process, because compiling can
    itself exhaust memory (starlark-rust folds constant expressions like `"a" * 2000000000`).
    """
    f = _endpoint_fields(body) if kind == "endpoint" else _trigger_fields(body)
    compile_check(f["source"], kind)
    now = time.time()
    with transaction(conn):
        if script_id is not None:
            get_script(conn, kind, script_id)
        if kind == "endpoint":
            _clash(conn, f["method"], parse_pattern(f["path"]), script_id)
            values = (kind, None, f["method"], f["path"], None, f["source"], f["access"],
                      json.dumps(f["spec"]) if f["spec"] is not None else None, now)
        else:
            values = (kind, f["name"], None, None, json.dumps(f["tables"]), f["source"], "admin", None, now)
        if script_id is None:
            conn.execute("INSERT INTO _wce_scripts(kind, name, method, path, tables, source, access, spec, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            script_id = conn.last_insert_rowid()
            action = f"{kind}.create"
        else:
            conn.execute("UPDATE _wce_scripts SET kind = ?, name = ?, method = ?, path = ?, tables = ?, source = ?,"
                         " access = ?, spec = ?, updated_at = ? WHERE id = ?", (*values, script_id))
            action = f"{kind}.update"
        target = f"{f['method']} {f['path']}" if kind == "endpoint" else f["name"]
        audit.record(conn, action, actor=actor, target=f"{kind}:{script_id}", detail={"what": target}, ip=ip)
        return get_script(conn, kind, script_id)


def delete(conn: apsw.Connection, kind: str, script_id: int, *, actor: str, ip: str | None) -> None:
    """Remove an endpoint or trigger."""
    with transaction(conn):
        get_script(conn, kind, script_id)
        conn.execute("DELETE FROM _wce_scripts WHERE id = ?", (script_id,))
        audit.record(conn, f"{kind}.delete", actor=actor, target=f"{kind}:{script_id}", ip=ip)


LOG_KEEP = 1000


def log_lines(conn: apsw.Connection, script_id: int | None, kind: str, lines: list[str]) -> None:
    """Keep what a script printed (newest LOG_KEEP lines per cenv)."""
    if not lines:
        return
    now = time.time()
    with transaction(conn):
        conn.executemany("INSERT INTO _wce_script_log(ts, script_id, kind, line) VALUES (?, ?, ?, ?)",
                         [(now, script_id, kind, line[:2000]) for line in lines[:200]])
        conn.execute("DELETE FROM _wce_script_log WHERE id <= (SELECT max(id) FROM _wce_script_log) - ?", (LOG_KEEP,))


def read_log(conn: apsw.Connection, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """Printed lines, newest first."""
    sql = "SELECT id, ts, script_id, kind, line FROM _wce_script_log"
    args: tuple[Any, ...] = ()
    if before is not None:
        sql += " WHERE id < ?"
        args = (before,)
    return [{"id": i, "ts": ts, "script_id": s, "kind": k, "line": line}
            for i, ts, s, k, line in conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]
