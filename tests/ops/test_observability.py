"""The request log and `GET /metrics`, on real servers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import trio

from support import Server, add_user, admin_cenv, assert_safe_error, bearer, login, new_cenv, start_server

TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def metrics_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    srv = start_server(tmp_path, "--access-log", str(log), "--new-per-hour", "3", env={"WCE_METRICS_TOKEN": TOKEN})
    yield srv, log
    srv.stop()


async def test_metrics_is_404_without_a_configured_token(client: httpx.AsyncClient) -> None:
    assert_safe_error(await client.get("/metrics"), 404, "not_found")
    assert_safe_error(await client.get("/metrics", headers=bearer("anything")), 404)


async def test_metrics_needs_the_operator_token(metrics_server: tuple[Server, Path]) -> None:
    srv, _ = metrics_server
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        c = await admin_cenv(client)
        other = await admin_cenv(client)
        user = await add_user(client, c, "reader")
        assert_safe_error(await client.get("/metrics"), 401, "unauthenticated")  # anonymous
        assert_safe_error(await client.get("/metrics", headers=bearer(user)), 401)  # a user of a cenv
        assert_safe_error(await client.get("/metrics", headers=bearer(other.admin)), 401)  # another cenv's admin
        assert_safe_error(await client.get("/metrics", headers=bearer(TOKEN + "x")), 401)
        assert_safe_error(await client.get("/metrics", headers={"authorization": f"Basic {TOKEN}"}), 401)
        assert_safe_error(await client.post("/metrics", headers=bearer(TOKEN)), 405)
        r = await client.get("/metrics", headers=bearer(TOKEN))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert TOKEN not in r.text


def _value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


async def test_metrics_count_requests_workers_and_refusals(metrics_server: tuple[Server, Path]) -> None:
    srv, _ = metrics_server
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        cenv = await new_cenv(client)
        token = await login(client, cenv)
        for _ in range(5):
            assert (await client.get(f"/{cenv}/auth/me", headers=bearer(token))).status_code == 200
        await client.get(f"/{cenv}/api/nothing-here", headers=bearer(token))
        await new_cenv(client)
        await new_cenv(client)
        assert (await client.post("/new", json={"username": "admin", "password": "correct horse"})).status_code == 429
        # a request is counted just after its answer is sent: the scrape may come a moment earlier
        deadline = time.monotonic() + 10
        while True:
            text = (await client.get("/metrics", headers=bearer(TOKEN))).text
            if _value(text, 'wce_rate_limited_total{route="new"}') or time.monotonic() > deadline:
                break
            await trio.sleep(0.02)
    assert _value(text, 'wce_requests_total{route="auth",status_class="2xx"}') >= 6  # login + 5
    assert _value(text, 'wce_requests_total{route="api",status_class="4xx"}') == 1
    assert _value(text, 'wce_requests_total{route="new",status_class="4xx"}') == 1
    assert _value(text, 'wce_rate_limited_total{route="new"}') == 1
    assert _value(text, 'wce_request_duration_seconds_count{status_class="2xx"}') >= 9
    assert _value(text, 'wce_request_duration_seconds_bucket{status_class="2xx",le="+Inf"}') == \
        _value(text, 'wce_request_duration_seconds_count{status_class="2xx"}')
    assert _value(text, "wce_workers_live") == 1
    assert _value(text, "wce_worker_starts_total") == 1
    assert _value(text, "wce_worker_restarts_total") == 0
    assert 'wce_worker_kills_total{cause="deadline"} 0' in text
    assert 'wce_page_cache_total{result="hit"}' in text
    for line in text.splitlines():  # every sample line parses as "name{labels} number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


async def test_request_log_is_one_json_line_without_secrets(metrics_server: tuple[Server, Path]) -> None:
    srv, log = metrics_server
    secret_pw = "Pa55word-that-must-not-leak"
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        r = await client.post("/new", json={"username": "admin", "password": secret_pw})
        cenv = r.json()["cenv"]
        token = await login(client, cenv, "admin", secret_pw)
        await client.get(f"/{cenv}/auth/me", headers=bearer(token))
        await client.get(f"/{cenv}/api/tables?token={token}&password={secret_pw}", headers=bearer(token))
        await client.get(f"/{cenv}/auth/me", headers={"cookie": f"wce_session={token}"})
        await client.get("/healthz")
        [worker] = srv.wait_workers(1)
    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == 6
    for e in entries:
        assert set(e) == {"ts", "cenv", "route", "method", "status", "duration_ms", "pid"}
        assert e["duration_ms"] >= 0
    assert [(e["route"], e["status"]) for e in entries] == [
        ("new", 201), ("auth", 200), ("auth", 200), ("api", 200), ("auth", 200), ("healthz", 200)]
    assert {e["cenv"] for e in entries[1:5]} == {cenv} and entries[0]["cenv"] is None
    assert {e["pid"] for e in entries[1:5]} == {worker} and entries[5]["pid"] is None
    text = log.read_text()
    for leak in (secret_pw, token, token.split(".")[2], "password", "Bearer", "wce_session", "?"):
        assert leak not in text


async def test_request_log_can_be_turned_off(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--access-log", "off")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenv = await new_cenv(client)
            await client.get(f"/{cenv}/")
    finally:
        srv.stop()
    assert not [line for line in srv.log if line.startswith('{"ts"')]


async def test_request_log_goes_to_stderr_by_default(fresh_server: Server) -> None:
    async with httpx.AsyncClient(base_url=fresh_server.url, timeout=30) as client:
        await client.get("/healthz")
        deadline = time.monotonic() + 10  # the server's output is read by a thread
        while not [x for x in fresh_server.log if x.startswith('{"ts"')] and time.monotonic() < deadline:
            await trio.sleep(0.02)
    lines = [json.loads(line) for line in fresh_server.log if line.startswith('{"ts"')]
    assert [(e["route"], e["status"]) for e in lines] == [("healthz", 200)]


async def test_metrics_count_worker_restarts_and_kills(tmp_path: Path) -> None:
    import os
    import signal

    srv = start_server(tmp_path, "--hard-deadline", "1", env={"WCE_METRICS_TOKEN": TOKEN})
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenv = await new_cenv(client)
            assert (await client.get(f"/{cenv}/")).status_code == 200
            [pid] = srv.wait_workers(1)
            os.kill(pid, signal.SIGSTOP)  # hung: killed at the hard deadline
            assert (await client.get(f"/{cenv}/")).status_code == 504
            assert (await client.get(f"/{cenv}/")).status_code == 200  # a new worker: a restart
            text = (await client.get("/metrics", headers=bearer(TOKEN))).text
    finally:
        srv.stop()
    assert _value(text, "wce_worker_starts_total") == 2
    assert _value(text, "wce_worker_restarts_total") == 1
    assert _value(text, 'wce_worker_kills_total{cause="deadline"}') == 1
    assert _value(text, 'wce_requests_total{route="page",status_class="5xx"}') == 1
