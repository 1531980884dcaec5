"""How each worker ended, as the fork server (their parent, which reaps them) sees it.

Before it forks a worker the fork server maps a page of shared memory for its crash marker
(wce.worker.crash_marker); when it reaps the worker it reads the page, next to the exit status,
and keeps the result, its fate, for the gateways that ask (op `fate`, by pid): a gateway answers the
requests the worker took with it by it. A worker that died running a script (killed by a signal
with a culprit noted, or retired after a script hit the memory cap) leaves a crash for the next
worker of its cenv to record against that script (`take_crashes`, passed at the fork).

All of this runs in the fork server's one thread, partly from its SIGCHLD handler: nothing here
iterates a dict the handler changes.
"""

from __future__ import annotations

import mmap
import os
import signal
import time
from collections import OrderedDict
from typing import Any

from . import crash_marker

FATES_KEPT = 1024
CRASHES_KEPT = 16  # per cenv, until its next worker takes them
CENVS_KEPT = 4096

_pages: dict[int, tuple[str, mmap.mmap]] = {}  # live worker pid -> (cenv, its marker page)
_fates: OrderedDict[int, dict[str, Any]] = OrderedDict()
_crashes: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()


def new_page() -> mmap.mmap:
    """A zeroed page shared with the child about to be forked."""
    return mmap.mmap(-1, crash_marker.MARK_SIZE, flags=mmap.MAP_SHARED)


def take_crashes(cenv: str) -> list[dict[str, Any]]:
    """The crashes the next worker of cenv records (and forgets them here)."""
    return _crashes.pop(cenv, [])


def in_child(page: mmap.mmap | None, crashes: list[dict[str, Any]]) -> None:
    """In a new child of the fork server: unmap the other workers' pages (a worker must not write
    another's), and for a worker, install its own."""
    for _, other in _pages.values():
        other.close()
    _pages.clear()
    if page is not None:
        crash_marker.install(page, crashes)


def started(pid: int, cenv: str, page: mmap.mmap) -> None:
    """The parent's side of the fork: remember the worker's page."""
    _pages[pid] = (cenv, page)


def reaped(pid: int, status: int | None) -> None:
    """A child was reaped (`status` as waitpid gives it, None if unknown): if it was a worker,
    read its page and keep its fate."""
    got = _pages.pop(pid, None)
    if got is None:
        return
    cenv, page = got
    try:
        mark = crash_marker.read(page)
    finally:
        page.close()
    sig = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else 0
    fate = {"cenv": cenv, "signal": sig, "culprit": mark["culprit"], "committed": mark["committed"]}
    _fates[pid] = fate
    while len(_fates) > FATES_KEPT:
        _fates.popitem(last=False)
    now = time.time()
    found = []
    if sig and sig != signal.SIGTERM and mark["culprit"] is not None:
        found.append({"script": mark["culprit"][2], "signal": sig, "ts": now})
    if mark["panicked"] is not None:
        found.append({"script": mark["panicked"], "signal": 0, "ts": now})
    if found:
        kept = _crashes.pop(cenv, [])
        _crashes[cenv] = (kept + found)[-CRASHES_KEPT:]
        while len(_crashes) > CENVS_KEPT:
            _crashes.popitem(last=False)


def tracked(pid: int) -> bool:
    """True while pid is a worker not reaped yet."""
    return pid in _pages


def fate(pid: int) -> dict[str, Any] | None:
    """How worker pid ended, if it has and we know."""
    return _fates.get(pid)
