"""The audit log: one row per change of state, written in the same transaction as the change."""

from __future__ import annotations

import json
import time
from typing import Any

import apsw


def record(conn: apsw.Connection, action: str, *, actor: str | None = None, target: str | None = None,
           detail: dict[str, Any] | None = None, ip: str | None = None) -> None:
    """Append an audit row. Call it inside the transaction of the change it describes."""
    conn.execute(
        "INSERT INTO _wce_audit_log(ts, actor, action, target, detail, ip) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), actor, action, target, json.dumps(detail, separators=(",", ":")) if detail else None, ip),
    )


def page(conn: apsw.Connection, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
    """Audit entries newest first, `before` an entry id to continue from."""
    sql = "SELECT id, ts, actor, action, target, detail, ip FROM _wce_audit_log"
    args: tuple[Any, ...] = ()
    if before is not None:
        sql += " WHERE id < ?"
        args = (before,)
    sql += " ORDER BY id DESC LIMIT ?"
    return [
        {"id": i, "ts": ts, "actor": actor, "action": action, "target": target,
         "detail": json.loads(detail) if detail else None, "ip": ip}
        for i, ts, actor, action, target, detail, ip in conn.execute(sql, (*args, limit))
    ]
