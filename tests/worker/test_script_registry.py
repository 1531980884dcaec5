"""The worker keeps scripts compiled between calls, and a script saved is what the very next call
runs: saved through this worker's connection (before any flush of the bus) or another one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wce.config import ServerConfig
from wce.core import cenv, db, ids
from wce.core.permissions import Actor
from wce.core.scripts import runtime, store
from wce.worker import scripting
from wce.worker.tenant import Tenant

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$xJcWa1n1bgcIb2bUf/GszFrXu8UKfV6B8wgAQeJMDmE"


def source(version: int) -> str:
    return f'def handle_request(ctx):\n    return {{"version": {version}}}\n'


@pytest.fixture
def tenant(tmp_path: Path) -> Iterator[Tenant]:
    cenv_id = ids.new_id()
    path = cenv.create(tmp_path, cenv_id, "admin", HASH)
    t = Tenant.open(cenv_id, path, ServerConfig(data=str(tmp_path)))
    yield t
    t.close()


def save(conn: Any, version: int, script_id: int | None = None, path: str = "/v") -> int:
    body = {"method": "GET", "path": path, "source": source(version), "access": "public"}
    return int(store.save(conn, "endpoint", body, script_id, actor="admin", ip=None)["id"])


def call(t: Tenant, path: str = "/v") -> Any:
    """What GET /fn{path} answers, as dispatch finds and runs it (None: no endpoint there); like
    the worker's request, it ends with a flush of the bus."""
    try:
        found, _, _ = t.scripts.endpoint("GET", path)
        if found is None:
            return None
        _, compiled = found
        raw = {"method": "GET", "path": path, "params": {}, "query": {}, "headers": {}, "body": "", "json": None,
               "user": None}
        value, _ = scripting.execute(t, compiled, raw, scripting.ScriptHost(t, Actor.anon(), None, "test"))
        return value
    finally:
        t.bus.flush()


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = runtime.compile_script

    def counting(src: str, kind: str, filename: str = "script.star") -> runtime.Compiled:
        seen.append(src)
        return real(src, kind, filename)

    monkeypatch.setattr(runtime, "compile_script", counting)
    return seen


def test_compiled_once_then_served_from_memory(tenant: Tenant, compiles: list[str]) -> None:
    save(tenant.conn, 1)
    assert [call(tenant) for _ in range(3)] == [{"version": 1}] * 3
    assert len(compiles) == 1
    tenant.conn.execute("CREATE TABLE notes(x); INSERT INTO notes VALUES (1)")  # unrelated writes
    assert call(tenant) == {"version": 1} and len(compiles) == 1


def test_a_save_on_this_connection_is_run_by_the_very_next_call(tenant: Tenant, compiles: list[str]) -> None:
    sid = save(tenant.conn, 1)
    assert call(tenant) == {"version": 1}
    save(tenant.conn, 2, sid)  # no invalidate(), no bus flush: the commit count alone tells
    assert call(tenant) == {"version": 2}
    save(tenant.conn, 3, sid, path="/w")
    assert call(tenant) is None and call(tenant, "/w") == {"version": 3}
    assert len(compiles) == 3


def test_a_save_on_another_connection_is_run_by_the_very_next_call(tenant: Tenant) -> None:
    sid = save(tenant.conn, 1)
    assert call(tenant) == {"version": 1}
    other = db.connect(str(tenant.path))  # as an operator's tool would, on the file
    save(other, 2, sid)
    assert call(tenant) == {"version": 2}
    other.execute("UPDATE _wce_scripts SET path = '/w' WHERE id = ?", (sid,))
    assert call(tenant) is None and call(tenant, "/w") == {"version": 2}
    other.execute("DELETE FROM _wce_scripts WHERE id = ?", (sid,))
    assert call(tenant, "/w") is None


def test_an_unchanged_source_is_not_compiled_again(tenant: Tenant, compiles: list[str]) -> None:
    sid = save(tenant.conn, 1)
    assert call(tenant) == {"version": 1}
    tenant.conn.execute("UPDATE _wce_scripts SET access = 'public', updated_at = 0 WHERE id = ?", (sid,))
    assert call(tenant) == {"version": 1} and len(compiles) == 1
