"""Resource caps only the operator can raise: the server's ceilings and per-cenv exceptions.

    server flags   --memory-mb, --cpu-ms-per-request, --max-db-mb: the ceiling of every cenv
    _wce_caps      the operator's exceptions for one cenv (`wce caps ID ...`): replace a ceiling,
                   up or down
    _wce_config    the cenv's own value (PATCH config): at most its ceiling (wce.core.settings)

Anyone can create a cenv, so a cenv's admin is not trusted with the host's resources. The
exceptions live in the cenv's own file, so they go wherever the cenv goes (deleted with it,
copied by `wce export`), yet no tenant can write them: no route does, the SQL guard denies every
`_wce_` table to tenant SQL, and an import empties the table (an uploaded file is tenant-made).
A worker reads them when it starts; `wce caps` stops a live one, since a process cannot raise its
own RLIMIT_AS hard limit.
"""

from __future__ import annotations

from collections.abc import Mapping

import apsw

from . import audit
from .db import transaction
from .errors import BadRequest
from .settings import CAPS


def exceptions(conn: apsw.Connection) -> dict[str, int]:
    """The operator's exceptions for this cenv (none in a file older than the table; a
    hand-edited value that is not a number is ignored)."""
    try:
        rows = conn.execute("SELECT key, value FROM _wce_caps").fetchall()
    except apsw.SQLError:
        return {}
    stored = {key: str(value) for key, value in rows}
    out = {}
    for key, (lo, hi) in CAPS.items():  # in CAPS order, for display
        if stored.get(key, "").isdigit():
            out[key] = max(lo, min(hi, int(stored[key])))
    return out


def ceilings(server: Mapping[str, int], exc: Mapping[str, int]) -> dict[str, int]:
    """The cenv's ceilings: each exception, else the server's flag."""
    return {key: int(exc.get(key, server[key])) for key in CAPS}


def check(key: str, value: int) -> int:
    """An exception the operator may set: a cap key and an integer in its range."""
    if key not in CAPS:
        raise BadRequest(f"{key} is not a cap; caps are {', '.join(CAPS)}")
    lo, hi = CAPS[key]
    if type(value) is not int or not lo <= value <= hi:
        raise BadRequest(f"{key} must be an integer from {lo} to {hi}")
    return value


def set_exceptions(conn: apsw.Connection, values: Mapping[str, int], *, actor: str, ip: str | None) -> None:
    """Store exceptions (others stay as they are), with an audit row the cenv's admin can read."""
    for key, value in values.items():
        check(key, value)
    with transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO _wce_caps(key, value) VALUES (?, ?)",
                         [(k, str(v)) for k, v in values.items()])
        audit.record(conn, "caps.update", actor=actor, detail={"exceptions": dict(values)}, ip=ip)


def clear_exceptions(conn: apsw.Connection, *, actor: str, ip: str | None) -> None:
    """Remove every exception: the server's ceilings apply again."""
    with transaction(conn):
        conn.execute("DELETE FROM _wce_caps")
        audit.record(conn, "caps.reset", actor=actor, ip=ip)
