"""The request log: one JSON line per request, for journald, a file, or nobody.

    {"ts":1764100000.123,"cenv":"abc...","route":"api","method":"GET","status":200,"duration_ms":1.42,"pid":1234}

What is never in it: the path beyond its route class, the query string, headers (so no tokens or
cookies), bodies (so no passwords), the client address. `route` is the class of the request's route
(its name in wce.gateway.routes: `api`, `page`, `new`, ...); `cenv` is null outside a cenv; `pid`
is the worker that answered (null if none did); status 0 means the client went away before an
answer was sent.

The line is built with one f-string: every value is either a number or comes from a fixed set or
an already-validated shape (a cenv id is `[a-z2-7]{26}`; a method outside the usual ones is
logged as OTHER), so no JSON escaping is needed.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestLog:
    """Writes the lines; `enabled` is False for `off`, and then `write` is never called."""

    def __init__(self, target: str) -> None:
        self.enabled = target not in ("off", "", "none")
        self._owned: TextIO | None = None
        self._out: TextIO | None = None
        if not self.enabled:
            return
        if target == "-":
            self._out = sys.stderr
        else:
            self._owned = self._out = open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, cenv: str | None, route: str, method: str, status: int, seconds: float,
              pid: int | None) -> None:
        """Append one line."""
        c = f'"{cenv}"' if cenv else "null"
        if method not in METHODS:
            method = "OTHER"
        p = pid if pid else "null"
        try:
            self._out.write(  # type: ignore[union-attr]
                f'{{"ts":{time.time():.3f},"cenv":{c},"route":"{route}","method":"{method}",'
                f'"status":{status},"duration_ms":{seconds * 1000:.2f},"pid":{p}}}\n')
        except (OSError, ValueError):
            pass  # a full disk or closed stream must not fail the request

    def close(self) -> None:
        """Close the file, if this log opened one."""
        if self._owned is not None:
            self._owned.close()
