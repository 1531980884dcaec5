"""Starlark triggers: `on_change(event)` after each commit that changed one of their tables.

Triggers subscribe to the cenv's event bus, so they run after the commit has returned, in commit
order. A trigger's own writes are a new commit, delivered to triggers in turn; the chain is cut at
MAX_DEPTH commits deep (a trigger that keeps re-triggering itself), with an audit row saying so.
A failing trigger writes an audit row with its error; it never undoes the commit that fired it,
and its own writes are rolled back. Triggers act with admin rights (they are the owner's code)
and their writes are audited as `trigger:NAME`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from wce.core import audit
from wce.core.errors import WceError
from wce.core.events import ChangeSet
from wce.core.permissions import Actor
from wce.core.scripts import runtime, store

from .scripting import ScriptHost, execute

if TYPE_CHECKING:
    from .tenant import Tenant

MAX_DEPTH = 8
MAX_CHANGES_PER_EVENT = 1000


class TriggerRunner:
    """Runs the cenv's triggers for each published change set."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self._depth: dict[int, int] = {}  # change-set seq -> how many trigger commits led to it
        self.runs = 0

    def on_change(self, cs: ChangeSet) -> None:
        depth = self._depth.pop(cs.seq, 0)
        tables = {t for t in cs.tables if not t.lower().startswith("_wce_")}
        if not tables:
            return
        t = self.tenant
        triggers = [(sid, name, json.loads(tabs or "[]")) for sid, name, tabs in t.conn.execute(
            "SELECT id, name, tables FROM _wce_scripts WHERE kind = 'trigger' ORDER BY id")]
        for sid, name, watched in triggers:
            hit = tables.intersection(watched)
            if not hit or t.scripts.is_disabled(f"trigger:{sid}"):  # disabled: crashed its worker too often
                continue
            if depth >= MAX_DEPTH:
                audit.record(t.conn, "trigger.depth_limit", actor=f"trigger:{name}", target=f"trigger:{sid}",
                             detail={"depth": depth, "tables": sorted(hit)})
                t.bus.flush()
                continue
            self._run(sid, name, hit, cs, depth)

    def _run(self, sid: int, name: str, hit: set[str], cs: ChangeSet, depth: int) -> None:
        t = self.tenant
        changes = [{"table": c.table, "op": c.op, "rowid": c.rowid} for c in cs.changes if c.table in hit]
        event = {"tables": sorted(hit), "changes": changes[:MAX_CHANGES_PER_EVENT]}
        host = ScriptHost(t, Actor(None, f"trigger:{name}", "admin"), None, f"trigger:{sid}")
        self.runs += 1
        try:
            _, compiled = t.scripts.compiled(sid)
            before = t.bus.statistics().queued
            execute(t, compiled, event, host)
            queued = t.bus.statistics().queued
            if queued > before:  # our commit is the newest queued change set
                self._depth[cs.seq + queued] = depth + 1
        except WceError as exc:
            detail: dict[str, Any] = {"error": getattr(exc, "detail", exc.message)}
            if isinstance(exc, runtime.ScriptFailed) and exc.line:
                detail.update(line=exc.line, column=exc.column)
            audit.record(t.conn, "trigger.error", actor=f"trigger:{name}", target=f"trigger:{sid}", detail=detail)
        if host.lines:
            store.log_lines(t.conn, sid, "trigger", host.lines)
