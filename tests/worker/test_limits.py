"""The per-request CPU limit: re-armed only when the room left is under one budget."""

from __future__ import annotations

import resource
from types import SimpleNamespace

import pytest

from wce.worker import limits


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fake clock of used CPU and a record of setrlimit calls (the test runner keeps its own limits)."""
    state = SimpleNamespace(used=10.2, sets=[])
    monkeypatch.setattr(limits.resource, "getrusage", lambda who: SimpleNamespace(ru_utime=state.used, ru_stime=0.0))
    monkeypatch.setattr(limits.resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    monkeypatch.setattr(limits.resource, "setrlimit", lambda which, limit: state.sets.append(limit[0]))
    monkeypatch.setattr(limits, "_armed", None)
    monkeypatch.setattr(limits, "_cpu_exceeded", False)
    return state


def test_arms_once_while_a_whole_budget_is_left(fake: SimpleNamespace) -> None:
    limits.arm_cpu(2000)
    assert fake.sets == [13]  # ceil(10.2 + 2)
    fake.used = 10.9
    limits.arm_cpu(2000)  # 2.1 s left: enough
    assert fake.sets == [13]
    fake.used = 11.5
    limits.arm_cpu(2000)  # 1.5 s left: re-armed, exactly as a fresh arming would
    assert fake.sets == [13, 14]


def test_rearms_after_sigxcpu_and_on_a_new_budget(fake: SimpleNamespace) -> None:
    limits.arm_cpu(2000)
    limits._on_xcpu(0, None)
    assert limits.cpu_exceeded()
    limits.arm_cpu(2000)
    assert not limits.cpu_exceeded() and len(fake.sets) == 2
    limits.arm_cpu(5000)
    assert fake.sets[-1] == 16 and len(fake.sets) == 3
