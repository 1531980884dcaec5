"""Scripts that crash their worker: each crash recorded, and a script that keeps crashing disabled
until it is saved again.

A script named by its label (`endpoint:ID`, `trigger:ID`, `page:ID` for a page's context) crashes
its worker when the process dies while it runs (an allocation failure under the memory cap aborts
it, a value nested too deep overflows the stack; wce.worker.crash_marker) or when it hits the
memory cap and the worker retires. The next worker of the cenv records each crash (with an audit
row `script.crashed`); the LIMIT-th crash within WINDOW seconds, all after the script's last save,
disables it (`_wce_script_disabled`, audit row `script.disabled`). A disabled script is answered
503 without running. Saving it again (its `updated_at` passes `disabled_at`) enables it.
"""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import apsw

from .. import audit
from ..db import transaction
from ..errors import Unavailable

LIMIT = 3
WINDOW = 600.0
LABEL = re.compile(r"(endpoint|trigger|page):([0-9]{1,18})")
_KIND = {"endpoint": "endpoint", "trigger": "trigger", "page": "page's context"}


def cause(sig: int) -> str:
    """What a signal that ended a worker running a script says about the script."""
    if sig in (0, signal.SIGABRT):  # 0: a panic or MemoryError, answered, then the worker retired
        return "memory"
    if sig == signal.SIGKILL:
        return "killed"
    return "crash"


def _updated_at(conn: apsw.Connection, kind: str, sid: int) -> float | None:
    table = "_wce_pages" if kind == "page" else "_wce_scripts"
    row = conn.execute(f"SELECT updated_at FROM {table} WHERE id = ?", (sid,)).fetchone()
    return None if row is None else float(row[0])


def record(conn: apsw.Connection, label: str, sig: int, ts: float | None = None) -> bool:
    """Record one crash of the script `label` (at `ts`); True if that disabled it."""
    m = LABEL.fullmatch(label)
    if m is None:
        return False
    now = time.time()
    ts = now if ts is None or ts > now else ts
    with transaction(conn):
        conn.execute("DELETE FROM _wce_script_crashes WHERE ts <= ?", (now - WINDOW,))
        conn.execute("INSERT INTO _wce_script_crashes(ts, script, signal) VALUES (?, ?, ?)", (ts, label, sig))
        audit.record(conn, "script.crashed", target=label, detail={"cause": cause(sig), "signal": sig})
        updated = _updated_at(conn, m.group(1), int(m.group(2)))
        if updated is None or _disabled_since(conn, label, updated) is not None:
            return False
        (n,) = conn.execute("SELECT count(*) FROM _wce_script_crashes WHERE script = ? AND ts > ?",
                            (label, max(now - WINDOW, updated))).fetchone()
        if n < LIMIT:
            return False
        conn.execute("INSERT OR REPLACE INTO _wce_script_disabled(script, disabled_at, crashes) VALUES (?, ?, ?)",
                     (label, now, n))
        audit.record(conn, "script.disabled", target=label, detail={"crashes": n, "window_s": WINDOW})
        return True


def _disabled_since(conn: apsw.Connection, label: str, updated: float) -> float | None:
    row = conn.execute("SELECT disabled_at FROM _wce_script_disabled WHERE script = ?", (label,)).fetchone()
    return None if row is None or row[0] < updated else float(row[0])


def disabled(conn: apsw.Connection) -> dict[str, int]:
    """The scripts disabled now (not saved since), with how many crashes disabled them."""
    out = {}
    for label, at, n in conn.execute("SELECT script, disabled_at, crashes FROM _wce_script_disabled").fetchall():
        m = LABEL.fullmatch(label)
        updated = _updated_at(conn, m.group(1), int(m.group(2))) if m else None
        if updated is not None and at >= updated:
            out[label] = int(n)
    return out


def refusal(label: str, crashes: int) -> Unavailable:
    """The error a disabled script is answered with."""
    m = LABEL.fullmatch(label)
    what = _KIND[m.group(1)] if m else "script"
    return Unavailable(f"this {what} is disabled after crashing its worker {crashes} times; save it again to re-enable")


def record_all(conn: apsw.Connection, crashes: list[dict[str, Any]]) -> None:
    """Record the crashes a new worker inherited (see wce.worker.crash_marker)."""
    for c in crashes:
        try:
            record(conn, str(c["script"]), int(c["signal"]), float(c["ts"]))
        except (KeyError, TypeError, ValueError):
            continue
