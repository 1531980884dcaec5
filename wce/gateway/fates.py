"""What a gateway answers for the requests a worker took with it when it died (finding L1).

A worker that dies while it runs a script (an allocation under the memory cap aborts it, a value
nested too deep overflows its stack) leaves a crash marker the fork server reads when it reaps it
(wce.worker.crash_marker, wce.worker.fates); the supervisor asks for it once per dead worker. Each
request the worker had received and not answered is then:

    the culprit: the request the script ran for       503 naming the cause (admins: which script)
    one that may have committed a write               503, "the cenv's worker stopped": it may be done
    any other (still queued, waiting, or reading)     sent once more, to the successor

When the worker did not die running a script (killed from outside, say), nothing is known of its
requests, and all of them get the 503 they always did.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from wce.core.errors import Unavailable, WceError

from .tokens import TokenCache

_CAUSES = {
    signal.SIGABRT: "the script ran past the cenv's memory cap",
    signal.SIGSEGV: "the script crashed the cenv's worker: it ran out of stack (a value nested too deeply?)",
    signal.SIGBUS: "the script crashed the cenv's worker: it ran out of stack (a value nested too deeply?)",
    signal.SIGKILL: "the cenv's worker was killed while the script ran (out of memory or time)",
}
_WHAT = {"endpoint": "endpoint {}", "trigger": "trigger {}", "page": "the context of page {}"}


@dataclass(frozen=True, slots=True)
class Fate:
    """How a worker ended: the signal that killed it (0: it exited), the request its script ran
    for when it did (gateway pid, request id, script label), and the requests that may have
    committed (gateway pid, request id; None: unknown)."""

    signal: int
    culprit: tuple[int, int, str] | None
    committed: frozenset[tuple[int, int]] | None

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Fate | None:
        """From the fork server's answer; None if it is not one."""
        if raw is None:
            return None
        try:
            c = raw.get("culprit")
            culprit = (int(c[0]), int(c[1]), str(c[2])) if c else None
            m = raw.get("committed")
            committed = frozenset((int(g), int(r)) for g, r in m) if m is not None else None
            return cls(int(raw.get("signal", 0)), culprit, committed)
        except (TypeError, ValueError, IndexError):
            return None

    @property
    def died_running_a_script(self) -> bool:
        """True if a signal ended it while a script ran: then its marker says who was where."""
        return self.signal != 0 and self.culprit is not None

    def caused_by(self, req_id: int) -> bool:
        """True if this gateway's request req_id ran the script that killed the worker."""
        return self.died_running_a_script and self.culprit is not None and self.culprit[:2] == (os.getpid(), req_id)

    def may_resend(self, req_id: int) -> bool:
        """True if this gateway's request req_id did nothing the worker kept: safe to send again."""
        return (self.died_running_a_script and not self.caused_by(req_id) and self.committed is not None
                and (os.getpid(), req_id) not in self.committed)

    def error(self, admin: bool) -> Unavailable:
        """The answer to the culprit: what happened, and for an admin, which script did it."""
        message = _CAUSES.get(self.signal, "the script crashed the cenv's worker")
        if admin and self.culprit is not None:
            kind, _, sid = self.culprit[2].partition(":")
            if kind in _WHAT:
                message += f" ({_WHAT[kind].format(sid)})"
        return Unavailable(message)


def admin_caller(tokens: TokenCache, token: str | None) -> bool:
    """Whether a request's token is an admin's (its signature checked; only for showing which
    script crashed the worker)."""
    if not token:
        return False
    try:
        return tokens.verify(token).role == "admin"
    except WceError:
        return False
