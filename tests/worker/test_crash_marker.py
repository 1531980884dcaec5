"""The crash marker (wce.worker.crash_marker), the fork server's reading of it (wce.worker.fates)
and the gateway's answers from it (wce.gateway.fates), without processes: what a worker that dies
running tenant code leaves behind, and who is answered how."""

from __future__ import annotations

import contextvars
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wce.gateway.fates import Fate
from wce.worker import crash_marker, fates


class Channel:
    """What the marker reads of a MessageChannel: how much is queued, how much written."""

    def __init__(self) -> None:
        self.queued = 0
        self.flushed = 0


@pytest.fixture
def page() -> Iterator[Any]:
    p = fates.new_page()
    crash_marker.install(p, [])
    yield p
    crash_marker._page = None
    crash_marker._committed.clear()


def in_task(fn: Callable[[], Any]) -> Any:
    """Run fn in a context of its own, as each request's trio task has."""
    return contextvars.copy_context().run(fn)


def test_the_page_names_the_request_running_a_script_and_those_that_committed(page: Any) -> None:
    gw = os.getpid()
    ch = Channel()

    def committed_unanswered() -> None:  # request 1: writes, its answer queued but not written
        r = crash_marker.begin(gw, 1)
        crash_marker.on_commit()
        ch.queued = 100
        crash_marker.end(r, ch)

    def read_only() -> None:  # request 2: reads only, answered
        crash_marker.end(crash_marker.begin(gw, 2), ch)

    in_task(committed_unanswered)
    in_task(read_only)

    def culprit() -> tuple[dict[str, Any], dict[str, Any]]:
        crash_marker.begin(gw, 3)
        marked = crash_marker.running("endpoint:7")
        during = crash_marker.read(page)
        crash_marker.done(marked)
        return during, crash_marker.read(page)

    during, after = in_task(culprit)
    assert during == {"culprit": [gw, 3, "endpoint:7"], "committed": [[gw, 1]], "panicked": None}
    assert after["culprit"] is None  # cleared once the script returned
    fate = Fate.parse({"signal": signal.SIGABRT, **during})
    assert fate is not None
    assert fate.caused_by(3) and not fate.may_resend(3)
    assert not fate.may_resend(1)  # its write is done: 503, not sent again
    assert fate.may_resend(2) and fate.may_resend(4)  # nothing done, or never read: sent again
    assert fate.error(admin=False).message == "the script ran past the cenv's memory cap"
    assert fate.error(admin=True).message == "the script ran past the cenv's memory cap (endpoint 7)"
    ch.flushed = 100  # request 1's answer is written: it leaves the list
    assert in_task(lambda: (crash_marker.running("trigger:2"), crash_marker.read(page))[1])["committed"] == []


def test_nested_scripts_restore_the_outer_one(page: Any) -> None:
    def run() -> dict[str, Any]:
        crash_marker.begin(9, 1)
        outer = crash_marker.running("page:4")
        inner = crash_marker.running("endpoint:5")
        assert crash_marker.read(page)["culprit"] == [9, 1, "endpoint:5"]
        crash_marker.done(inner)
        got = crash_marker.read(page)
        crash_marker.done(outer)
        return got

    assert in_task(run)["culprit"] == [9, 1, "page:4"]


def test_a_worker_that_dies_outside_a_script_says_nothing(page: Any) -> None:
    fate = Fate.parse({"signal": signal.SIGKILL, **crash_marker.read(page)})
    assert fate is not None and not fate.died_running_a_script
    assert not fate.may_resend(1) and not fate.caused_by(1)  # unknown: 503, as always


def test_labels_not_well_formed_are_dropped(page: Any) -> None:
    page[:48] = b"\x01\x00\x00\x00" + b"\x02" + b"\x00" * 7 + b"endpoint:1; DROP TABLE x".ljust(32, b"\0") + b"\0" * 4
    assert crash_marker.read(page)["culprit"] is None


def test_the_fork_server_hands_crashes_to_the_next_worker(page: Any) -> None:
    in_task(lambda: (crash_marker.begin(5, 8), crash_marker.running("trigger:3")))
    fates.started(4242, "somecenv", page)
    status = signal.SIGSEGV  # as waitpid reports a process killed by SIGSEGV
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    fates.reaped(4242, status)
    assert fates.fate(4242) == {"cenv": "somecenv", "signal": signal.SIGSEGV, "culprit": [5, 8, "trigger:3"],
                                "committed": []}
    [crash] = fates.take_crashes("somecenv")
    assert crash["script"] == "trigger:3" and crash["signal"] == signal.SIGSEGV
    assert fates.take_crashes("somecenv") == []


def test_a_script_that_hit_the_cap_and_retired_counts_too() -> None:
    p = fates.new_page()
    crash_marker.install(p, [])
    try:
        crash_marker.panicked("endpoint:12")
        fates.started(4343, "othercenv", p)
        fates.reaped(4343, 0)  # it exited normally, after answering 503
    finally:
        crash_marker._page = None
    [crash] = fates.take_crashes("othercenv")
    assert crash["script"] == "endpoint:12" and crash["signal"] == 0
