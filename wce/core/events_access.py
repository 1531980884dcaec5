"""Which committed changes a caller may hear about: table grants, then row policies.

A realtime stream only reports rows its caller could select. Without a select policy every row of
a granted table is visible; with one, inserted and updated rows are checked as they are now
(`Access.visible_rowids`), and a deleted row, which is gone, against the values it had (the bus
keeps them): the policy expression runs over a one-row subquery of those values, aliased with
the table's name so that `table.column` references work too. A row of a WITHOUT ROWID table under
a select policy cannot be identified and is left out; so is a row whose old values do not match
the table's columns (the schema changed in between).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import sqlguard
from .events import Change
from .errors import WceError

if TYPE_CHECKING:
    from .permissions import Access, Actor

CHUNK = 500  # rowids per visibility query


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_columns(guard: sqlguard.Guard, table: str) -> list[str]:
    """Every column of the table as the preupdate hook sees a row (hidden ones included)."""
    return [r[0] for r in guard.conn.execute("SELECT name FROM pragma_table_xinfo(?)", (table,))]


def visible_changes(access: Access, guard: sqlguard.Guard, actor: Actor, table: str,
                    changes: Sequence[Change]) -> list[Change]:
    """The changes of one table that actor may see, in their order."""
    rule = access.rule(actor.role, table, "select")
    if not rule.granted:
        return []
    if rule.using is None:
        return list(changes)
    live = [c.rowid for c in changes if c.op != "delete" and c.rowid is not None]
    seen: set[int] = set()
    for i in range(0, len(live), CHUNK):
        seen |= access.visible_rowids(actor, table, live[i:i + CHUNK])
    columns: list[str] | None = None
    out = []
    for c in changes:
        if c.rowid is None:
            continue
        if c.op != "delete":
            if c.rowid in seen:
                out.append(c)
            continue
        if columns is None:
            columns = table_columns(guard, table)
        if c.old is not None and len(c.old) == len(columns) and _was_visible(guard, actor, table, rule.using,
                                                                             columns, c.old):
            out.append(c)
    return out


def _was_visible(guard: sqlguard.Guard, actor: Actor, table: str, using: str, columns: list[str],
                 old: tuple[object, ...]) -> bool:
    cols = ", ".join(f":_c{i} AS {_quote(name)}" for i, name in enumerate(columns))
    params = {**actor.params(), **{f"_c{i}": v for i, v in enumerate(old)}}
    try:
        _, rows = sqlguard.run(guard, sqlguard.Mode.READ, f"SELECT 1 FROM (SELECT {cols}) AS {_quote(table)}"
                               f" WHERE {using}", params, scope=f"evdel:{actor.role}")
    except WceError:
        return False  # a policy that cannot run shows nothing
    return bool(rows)
