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
