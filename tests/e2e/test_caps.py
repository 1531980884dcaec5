"""Resource caps against a real server (finding H1): the operator's `--memory-mb`,
`--cpu-ms-per-request` and `--max-db-mb` are ceilings. A cenv's own config may lower them, never
raise them; `wce caps ID` sets per-cenv exceptions; the worker's real RLIMIT_AS follows the
effective cap."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import apsw
import httpx
import pytest
import trio

from support import (ROOT, Cenv, Server, admin_cenv, assert_safe_error, audit_count, bearer, login,
                     processes_mentioning, sql, start_server, worker_of)

CEILINGS = {"memory_mb": 192, "cpu_ms_per_request": 1500, "max_db_mb": 64}
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("caps"), "--idle-timeout", "600",
                       "--memory-mb", str(CEILINGS["memory_mb"]),
                       "--cpu-ms-per-request", str(CEILINGS["cpu_ms_per_request"]),
                       "--max-db-mb", str(CEILINGS["max_db_mb"]))
    yield srv
    srv.stop()
    assert processes_mentioning(str(srv.data)) == []


@pytest.fixture
async def client(capped: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=capped.url, timeout=60) as c:
        yield c


def wce(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The admin CLI on the server's data folder, as its operator runs it."""
    return subprocess.run([sys.executable, "-m", "wce", "--data", str(data), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def address_space(pid: int) -> tuple[int, int]:
    """RLIMIT_AS of a process (soft, hard), from /proc/<pid>/limits."""
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max address space"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


async def restart(srv: Server, client: httpx.AsyncClient, c: Cenv) -> int:
    """Stop the cenv's worker (as `wce delete` and `wce caps` do), start a new one; its pid."""
    from wce.admin import stop_worker
    from wce.config import ServerConfig

    await trio.to_thread.run_sync(stop_worker, ServerConfig(data=str(srv.data)).runtime_path, c.id)
    assert (await client.get(c.url("/auth/me"), headers=bearer(c.admin))).status_code == 200
    return worker_of(srv, c.id)


async def test_a_tenant_cannot_raise_its_caps(client: httpx.AsyncClient, capped: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    n = audit_count(capped.data, c.id)
    for key, ceiling in CEILINGS.items():
        for value in (ceiling + 1, {"memory_mb": 16384, "cpu_ms_per_request": 600_000, "max_db_mb": 1 << 20}[key]):
            body = assert_safe_error(await client.patch(c.url("/api/config"), headers=h, json={key: value}), 422, "invalid")
            assert body["error"]["message"] == f"{key} may be at most {ceiling} on this server"
    # one refused key refuses the whole change
    r = await client.patch(c.url("/api/config"), headers=h, json={"registration": "open", "memory_mb": 193})
    assert_safe_error(r, 422, "invalid")
    assert sql(capped.data, c.id, "SELECT key, value FROM _wce_config") == []
    assert audit_count(capped.data, c.id) == n
    # a key the cenv never set is at its ceiling, and the worker runs under it
    cfg = (await client.get(c.url("/api/config"), headers=h)).json()
    assert {k: cfg[k] for k in CEILINGS} == CEILINGS
    assert address_space(worker_of(capped, c.id)) == (192 << 20, 192 << 20)


async def test_lowering_a_cap_works(client: httpx.AsyncClient, capped: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    low = {"memory_mb": 128, "cpu_ms_per_request": 500, "max_db_mb": 1}
    r = await client.patch(c.url("/api/config"), headers=h, json=low)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in low} == low
    assert dict(sql(capped.data, c.id, "SELECT key, value FROM _wce_config")) == {k: str(v) for k, v in low.items()}
    # the database cap applies at once: past 1 MiB a write is refused
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE blobs (id INTEGER PRIMARY KEY, b TEXT)"})
    statuses = set()
    for _ in range(6):
        r = await client.post(c.url("/api/tables/blobs/rows"), headers=h, json=[{"b": "x" * 60_000}] * 6)
        statuses.add(r.status_code)
        if r.status_code == 413:
            assert_safe_error(r, 413, "too_large")
            break
    assert 413 in statuses
    # the memory cap when the worker next starts
    assert address_space(await restart(capped, client, c)) == (128 << 20, 128 << 20)


async def test_values_stored_above_the_ceiling_are_clamped(client: httpx.AsyncClient, capped: Server) -> None:
    """Set before the ceilings existed (or the operator lowered a flag since): never obeyed."""
    c = await admin_cenv(client)
    sql(capped.data, c.id, "INSERT INTO _wce_config(key, value) VALUES ('memory_mb', '16384'), "
        "('cpu_ms_per_request', '600000'), ('max_db_mb', '1048576')")
    pid = await restart(capped, client, c)
    assert address_space(pid) == (192 << 20, 192 << 20)
    cfg = (await client.get(c.url("/api/config"), headers=bearer(c.admin))).json()
    assert {k: cfg[k] for k in CEILINGS} == CEILINGS


async def test_get_config_shows_the_caps_and_patch_refuses_them(client: httpx.AsyncClient, capped: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    cfg = (await client.get(c.url("/api/config"), headers=h)).json()
    assert cfg["caps"] == CEILINGS
    assert set(cfg) == {"registration", "session_ttl_seconds", "default_role", "rate_limit_per_minute",
                        "memory_mb", "cpu_ms_per_request", "max_db_mb", "caps"}
    for body in ({"caps": {"memory_mb": 4096}}, {"caps": CEILINGS, "registration": "open"}):
        err = assert_safe_error(await client.patch(c.url("/api/config"), headers=h, json=body), 400, "bad_request")
        assert "operator" in err["error"]["message"]
    assert sql(capped.data, c.id, "SELECT count(*) FROM _wce_config") == [(0,)]
    assert sql(capped.data, c.id, "SELECT count(*) FROM _wce_caps") == [(0,)]
    # PATCH answers the same shape as GET
    r = await client.patch(c.url("/api/config"), headers=h, json={"memory_mb": 100})
    assert r.status_code == 200 and r.json()["caps"] == CEILINGS and r.json()["memory_mb"] == 100


async def test_an_operator_exception_raises_a_cap(client: httpx.AsyncClient, capped: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    old = worker_of(capped, c.id)
    r = await trio.to_thread.run_sync(lambda: wce(capped.data, "caps", c.id, "--memory-mb", "512",
                                                  "--cpu-ms-per-request", "3000", "--max-db-mb", "128"))
    assert r.returncode == 0, r.stderr
    assert "stopped" in r.stderr and "next request" in r.stderr  # the live worker was asked to stop
    assert not os.path.exists(f"/proc/{old}") or old not in capped.workers()
    shown = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}
    assert shown["memory_mb"][:2] == ["512", "exception"] and "192" in " ".join(shown["memory_mb"])
    # the cenv's admin sees the new caps, its unset keys follow them, and its worker runs under them
    cfg = (await client.get(c.url("/api/config"), headers=h)).json()
    assert cfg["caps"] == {"memory_mb": 512, "cpu_ms_per_request": 3000, "max_db_mb": 128}
    assert cfg["memory_mb"] == 512
    assert address_space(worker_of(capped, c.id)) == (512 << 20, 512 << 20)
    # the tenant may now raise up to the exception, not past it
    assert (await client.patch(c.url("/api/config"), headers=h, json={"memory_mb": 400})).status_code == 200
    err = assert_safe_error(await client.patch(c.url("/api/config"), headers=h, json={"memory_mb": 513}), 422)
    assert err["error"]["message"] == "memory_mb may be at most 512 on this server"
    assert address_space(await restart(capped, client, c)) == (400 << 20, 400 << 20)
    # an exception can lower a cap too
    assert wce(capped.data, "caps", c.id, "--memory-mb", "96").returncode == 0
    cfg = (await client.get(c.url("/api/config"), headers=h)).json()
    assert cfg["caps"]["memory_mb"] == 96 and cfg["memory_mb"] == 96  # the stored 400 is clamped
    assert address_space(worker_of(capped, c.id)) == (96 << 20, 96 << 20)
    # --reset: back to the server's ceilings
    r = await trio.to_thread.run_sync(lambda: wce(capped.data, "caps", c.id, "--reset"))
    assert r.returncode == 0, r.stderr
    assert sql(capped.data, c.id, "SELECT count(*) FROM _wce_caps") == [(0,)]
    cfg = (await client.get(c.url("/api/config"), headers=h)).json()
    assert cfg["caps"] == CEILINGS and cfg["memory_mb"] == 192
    assert address_space(worker_of(capped, c.id)) == (192 << 20, 192 << 20)


async def test_an_import_loses_its_caps_rows(client: httpx.AsyncClient, capped: Server, tmp_path: Path) -> None:
    """An uploaded file is tenant-made: exceptions it carries are dropped."""
    c = await admin_cenv(client)
    r = await client.get(c.url("/api/export"), headers=bearer(c.admin))
    assert r.status_code == 200
    forged = tmp_path / "forged.sqlite"
    forged.write_bytes(r.content)
    conn = apsw.Connection(str(forged))
    conn.execute("INSERT INTO _wce_caps(key, value) VALUES ('memory_mb', '4096'), ('cpu_ms_per_request', '600000'),"
                 " ('max_db_mb', '1048576')")
    conn.close()

    def post() -> httpx.Response:
        with httpx.Client(timeout=60) as hc:
            return hc.post(f"{capped.url}/import", data={"username": "admin", "password": PASSWORD},
                           files={"file": ("c.sqlite", forged.read_bytes(), "application/vnd.sqlite3")})

    r = await trio.to_thread.run_sync(post)
    assert r.status_code == 201, r.text
    new = Cenv(r.json()["cenv"], "")
    assert sql(capped.data, new.id, "SELECT count(*) FROM _wce_caps") == [(0,)]
    new.admin = await login(client, new.id)
    cfg = (await client.get(new.url("/api/config"), headers=bearer(new.admin))).json()
    assert cfg["caps"] == CEILINGS and cfg["memory_mb"] == 192
    assert address_space(worker_of(capped, new.id)) == (192 << 20, 192 << 20)
