"""Worker processes: cold start, replacement after death, hard deadline, idle exit, caps, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from support import ROOT, Server, alive, reaped, assert_safe_error, bearer, login, new_cenv, processes_mentioning, sql, start_server


async def test_killed_worker_is_replaced_and_acknowledged_writes_survive(fresh_server: Server) -> None:
    async with httpx.AsyncClient(base_url=fresh_server.url, timeout=30) as client:
        cenv = await new_cenv(client)
        token = await login(client, cenv)  # an acknowledged write: the session row
        [pid] = fresh_server.wait_workers(1)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not reaped(pid) and time.monotonic() < deadline:
            await trio.sleep(0.02)
        # the next request is served by a new worker, and the session written before the kill is there
        r = await client.get(f"/{cenv}/auth/me", headers=bearer(token))
        assert r.status_code == 200, r.text
        [new_pid] = fresh_server.wait_workers(1)
        assert new_pid != pid


async def test_request_in_flight_when_worker_dies_gets_503(fresh_server: Server) -> None:
    async with httpx.AsyncClient(base_url=fresh_server.url, timeout=30) as client:
        cenv = await new_cenv(client)
        await client.get(f"/{cenv}/")
        [pid] = fresh_server.wait_workers(1)
        os.kill(pid, signal.SIGSTOP)  # the worker hangs
        async with trio.open_nursery() as n:
            results: list[httpx.Response] = []

            async def call() -> None:
                results.append(await client.get(f"/{cenv}/"))

            n.start_soon(call)
            await trio.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
        assert_safe_error(results[0], 503, "unavailable")
        r = await client.get(f"/{cenv}/")
        assert r.status_code == 200


async def test_hung_worker_is_killed_at_the_hard_deadline(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--hard-deadline", "1")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenv = await new_cenv(client)
            other = await new_cenv(client)
            await client.get(f"/{cenv}/")
            [pid] = srv.wait_workers(1)
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            r = await client.get(f"/{cenv}/")
            assert_safe_error(r, 504, "timeout")
            assert time.monotonic() - t0 < 10
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                await trio.sleep(0.02)
            assert not alive(pid)
            assert (await client.get(f"/{cenv}/")).status_code == 200
            assert (await client.get(f"/{other}/")).status_code == 200
    finally:
        srv.stop()
        assert processes_mentioning(str(srv.data)) == []


async def test_concurrent_first_requests_start_one_worker(fresh_server: Server) -> None:
    async with httpx.AsyncClient(base_url=fresh_server.url, timeout=30) as client:
        cenv = await new_cenv(client)
        fresh_server.wait_workers(0)
        statuses: list[int] = []

        async def hit() -> None:
            statuses.append((await client.get(f"/{cenv}/")).status_code)

        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(hit)
        assert statuses == [200] * 20
        assert len(fresh_server.workers()) == 1


async def test_two_cenvs_in_parallel_get_separate_files_and_secrets(client: httpx.AsyncClient, server: Server) -> None:
    ids: list[str] = []

    async def make() -> None:
        ids.append(await new_cenv(client))

    async with trio.open_nursery() as n:
        n.start_soon(make)
        n.start_soon(make)
    a, b = ids
    assert a != b
    assert (server.data / f"{a}.sqlite").exists() and (server.data / f"{b}.sqlite").exists()
    secrets = {sql(server.data, c, "SELECT value FROM _wce_meta WHERE key = 'jwt_secret'")[0][0] for c in ids}
    assert len(secrets) == 2 and all(len(s) == 64 for s in secrets)
    # no temp file left behind
    assert not [p for p in server.data.iterdir() if p.name.endswith(".creating")]


async def test_sigterm_leaves_no_process_and_finishes_in_flight(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        cenvs = [await new_cenv(client) for _ in range(3)]
        for c in cenvs:
            await login(client, c)
        assert len(srv.wait_workers(3)) == 3
        result: list[int] = []

        async def slow_login() -> None:
            r = await client.post(f"/{cenvs[0]}/auth/login", json={"username": "admin", "password": "correct horse"})
            result.append(r.status_code)

        async with trio.open_nursery() as n:
            n.start_soon(slow_login)
            await trio.sleep(0.01)
            srv.proc.send_signal(signal.SIGTERM)
    assert result == [200]
    assert srv.stop(30) == 0
    deadline = time.monotonic() + 5
    while processes_mentioning(str(srv.data)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(str(srv.data)) == []
    assert not list((srv.data / ".run").glob("*.sock")) if (srv.data / ".run").exists() else True


async def test_idle_worker_exits_and_comes_back(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--idle-timeout", "0.5")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenv = await new_cenv(client)
            token = await login(client, cenv)
            assert len(srv.wait_workers(1)) == 1
            assert srv.wait_workers(0, timeout=15) == []
            assert (await client.get(f"/{cenv}/auth/me", headers=bearer(token))).status_code == 200
    finally:
        srv.stop()


async def test_worker_cap_evicts_least_recently_used(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-workers", "2")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenvs = [await new_cenv(client) for _ in range(3)]
            for c in cenvs:
                assert (await client.get(f"/{c}/")).status_code == 200
            assert len(srv.wait_workers(2)) == 2
            for c in cenvs:  # all still served
                assert (await client.get(f"/{c}/")).status_code == 200
    finally:
        srv.stop()


async def test_worker_caps_are_applied(client: httpx.AsyncClient, server: Server) -> None:
    cenv = await new_cenv(client)
    sql(server.data, cenv, "INSERT INTO _wce_config(key, value) VALUES ('memory_mb', '200')")
    await client.get(f"/{cenv}/")
    pids = server.workers()
    limits = {}
    for pid in pids:
        text = Path(f"/proc/{pid}/limits").read_text()
        line = next(l for l in text.splitlines() if l.startswith("Max address space"))
        limits[pid] = int(line.split()[3])
    assert (200 << 20) in limits.values()
    env = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in pids}
    assert all(b"MALLOC_ARENA_MAX=1" in e for e in env.values())


def test_cli_new_creates_a_cenv_that_serves(tmp_path: Path, server: Server) -> None:
    r = subprocess.run([sys.executable, "-m", "wce", "--data", str(server.data), "new", "--username", "cliadmin"],
                       input="cli password 1\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    cenv = r.stdout.strip()
    assert (server.data / f"{cenv}.sqlite").exists()
    assert "cli password 1" not in r.stdout + r.stderr
    resp = httpx.post(f"{server.url}/{cenv}/auth/login", json={"username": "cliadmin", "password": "cli password 1"})
    assert resp.status_code == 200
    bad = subprocess.run([sys.executable, "-m", "wce", "--data", str(tmp_path), "new", "--username", "x"],
                         input="short\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode != 0 and "password" in bad.stderr and "Traceback" not in bad.stderr


async def test_requests_right_after_a_silent_death_are_served(fresh_server: Server) -> None:
    """Kill the worker and ask as soon as it is gone, before the gateway's watcher can have run:
    the gateway asks the kernel itself (pidfd) or, if the send fails, sends it to a new worker."""
    async with httpx.AsyncClient(base_url=fresh_server.url, timeout=30) as client:
        cenv = await new_cenv(client)
        token = await login(client, cenv)
        for _ in range(5):
            assert (await client.get(f"/{cenv}/auth/me", headers=bearer(token))).status_code == 200
            [pid] = fresh_server.wait_workers(1)
            os.kill(pid, signal.SIGKILL)
            while not reaped(pid):
                await trio.sleep(0.001)
            r = await client.get(f"/{cenv}/auth/me", headers=bearer(token))
            assert r.status_code == 200, r.text


@pytest.mark.parametrize("gateways", ["1", "2"])
async def test_killed_fork_server_is_replaced_and_cenvs_keep_serving(tmp_path: Path, gateways: str) -> None:
    srv = start_server(tmp_path, "--gateways", gateways)
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenv = await new_cenv(client)
            token = await login(client, cenv)
            [worker] = srv.wait_workers(1)
            old = srv.forkserver
            os.kill(old, signal.SIGKILL)  # its workers go with it (PR_SET_PDEATHSIG)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    if srv.forkserver != old:
                        break
                except AssertionError:  # none at this instant
                    pass
                await trio.sleep(0.05)
            assert srv.forkserver != old

            def blocked() -> str:
                status = Path(f"/proc/{srv.forkserver}/status").read_text().splitlines()
                return next(line for line in status if line.startswith("SigBlk:")).split()[1]

            while blocked() != "0" * 16 and time.monotonic() < deadline:  # once started, it unblocks
                await trio.sleep(0.05)
            assert blocked() == "0" * 16  # it can be told to stop, and reaps its workers
            statuses = []
            while time.monotonic() < deadline:  # requests in flight at the kill may get 503
                r = await client.get(f"/{cenv}/auth/me", headers=bearer(token))
                statuses.append(r.status_code)
                if r.status_code == 200:
                    break
                assert_safe_error(r, 503, "unavailable")
                await trio.sleep(0.1)
            assert statuses[-1] == 200
            assert not alive(worker)
            r = await client.post("/new", json={"username": "admin", "password": "correct horse"})
            assert r.status_code == 201
    finally:
        assert srv.stop() == 0
    assert processes_mentioning(str(srv.data)) == []
