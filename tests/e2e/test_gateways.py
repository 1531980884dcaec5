"""Several gateway processes on one port (`wce serve --gateways 2`): one worker per cenv however many
gateways ask at once, limits that hold across gateways, a killed gateway replaced, clean shutdown."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from support import (RawClient, Server, admin_cenv, alive, assert_safe_error, bearer, burst, gateway_links, gateway_of,
                     link_every_gateway, new_cenv, processes_mentioning, start_server)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path, "--gateways", "2", "--idle-timeout", "600")
    assert len(srv.gateways()) == 2
    yield srv
    assert srv.stop() == 0
    assert processes_mentioning(str(srv.data)) == []


@pytest.fixture
async def client(two: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=two.url, timeout=30) as c:
        yield c


def one_connection_per_gateway(srv: Server, path: str) -> dict[int, RawClient]:
    """A keep-alive connection to each gateway process, by its pid (opened until each has one)."""
    conns: dict[int, RawClient] = {}
    for _ in range(60):
        raw = RawClient(srv.url)
        assert raw.request("GET", path)[0] in (200, 404)
        pid = gateway_of(srv, raw)
        if pid is not None and pid not in conns:
            conns[pid] = raw
        else:
            raw.close()
        if len(conns) == len(srv.gateways()):
            return conns
    raise AssertionError("could not reach every gateway")


async def test_concurrent_first_requests_through_both_gateways_start_one_worker(two: Server,
                                                                                client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    two.wait_workers(0)
    answers = await burst(two, 30, "GET", f"/{cenv}/")
    assert [r.status_code for r in answers] == [200] * 30
    assert len(two.workers()) == 1
    assert gateway_links(two, cenv) == 2  # both gateways reached it: the same worker


async def test_cenv_rate_limit_holds_across_gateways(two: Server, client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    r = await client.post(c.url("/api/pages"), headers=h, json={"path": "/hello", "template": "<p>hello</p>"})
    assert r.status_code == 201, r.text
    assert (await client.patch(c.url("/api/config"), headers=h, json={"rate_limit_per_minute": 6})).status_code == 200
    # every request counts once, whichever gateway takes it, cached public page included
    answers = await burst(two, 16, "GET", c.url("/hello"))
    assert gateway_links(two, c.id) == 2
    assert sorted(r.status_code for r in answers) == [200] * 6 + [429] * 10
    refused = next(r for r in answers if r.status_code == 429)
    assert_safe_error(refused, 429, "rate_limited")
    assert 0 < int(refused.headers["retry-after"]) <= 60


async def test_new_rate_limit_holds_across_gateways(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--gateways", "2", "--new-per-hour", "3")
    try:
        answers = await burst(srv, 8, "POST", "/new", json={"username": "admin", "password": "correct horse"})
        assert sorted(r.status_code for r in answers) == [201] * 3 + [429] * 5
        assert_safe_error(next(r for r in answers if r.status_code == 429), 429, "rate_limited")
    finally:
        assert srv.stop() == 0


async def test_killed_gateway_is_replaced_and_the_worker_kept(two: Server, client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    assert [r.status_code for r in await burst(two, 10, "GET", f"/{cenv}/")] == [200] * 10
    [worker] = two.wait_workers(1)
    victim = two.gateways()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (victim in two.gateways() or len(two.gateways()) != 2) and time.monotonic() < deadline:
        await trio.sleep(0.05)
    assert victim not in two.gateways() and len(two.gateways()) == 2
    answers = await burst(two, 20, "GET", f"/{cenv}/")
    assert [r.status_code for r in answers] == [200] * 20
    assert two.workers() == [worker] and alive(worker)


async def test_sigterm_stops_every_gateway_and_worker(two: Server, client: httpx.AsyncClient) -> None:
    cenvs = [await new_cenv(client) for _ in range(2)]
    for cenv in cenvs:
        await burst(two, 6, "GET", f"/{cenv}/")
    assert len(two.wait_workers(2)) == 2
    assert two.stop() == 0
    deadline = time.monotonic() + 5
    while processes_mentioning(str(two.data)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(str(two.data)) == []


async def test_idle_worker_closes_for_every_gateway_and_a_successor_serves(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--gateways", "2", "--idle-timeout", "0.5")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            c = await admin_cenv(client)
            await burst(srv, 10, "GET", c.url("/auth/me"), headers=bearer(c.admin))
            [first] = srv.wait_workers(1)
            assert srv.wait_workers(0, timeout=15) == []  # idle: it told both gateways, they let go
            answers = await burst(srv, 10, "GET", c.url("/auth/me"), headers=bearer(c.admin))
            assert [r.status_code for r in answers] == [200] * 10
            [second] = srv.wait_workers(1)
            assert second != first
    finally:
        assert srv.stop() == 0


async def test_metrics_add_up_every_gateway(tmp_path: Path) -> None:
    token = "metrics-token-for-tests-0123456789"
    srv = start_server(tmp_path, "--gateways", "2", env={"WCE_METRICS_TOKEN": token})
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            c = await admin_cenv(client)
            answers = await burst(srv, 24, "GET", c.url("/auth/me"), headers=bearer(c.admin))
            assert [r.status_code for r in answers] == [200] * 24
            assert gateway_links(srv, c.id) == 2
            await trio.sleep(2.5)  # each gateway writes its counters every second
            # whichever gateway answers the scrape, the totals are the server's
            scrapes = [r.text for r in await burst(srv, 6, "GET", "/metrics", headers=bearer(token))]
        for text in scrapes:
            samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
            assert float(samples['wce_requests_total{route="auth",status_class="2xx"}']) == 25  # login + 24
            assert float(samples['wce_requests_total{route="new",status_class="2xx"}']) == 1
            assert float(samples["wce_workers_live"]) == 1
            assert float(samples["wce_worker_starts_total"]) == 1  # the other gateway joined it
    finally:
        assert srv.stop() == 0


async def test_a_write_answered_by_one_gateway_is_read_back_through_the_other(two: Server,
                                                                                client: httpx.AsyncClient) -> None:
    """Public pages are served by each gateway from what the worker pushed; the push goes to every
    gateway before the write is answered, and a gateway with an unread push asks the worker."""
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"})
    await client.put(c.url("/api/permissions/t"), headers=h, json={"roles": {"anon": {"select": True}}})
    r = await client.post(c.url("/api/pages"), headers=h, json={
        "path": "/last", "template": "{{#rows}}{{v}}{{/rows}}", "queries": {"rows": "SELECT v FROM t ORDER BY id DESC LIMIT 1"}})
    assert r.status_code == 201, r.text
    await link_every_gateway(two, c.id)
    conns = one_connection_per_gateway(two, c.url("/last"))
    (_, writer), (reading_gateway, reader) = conns.items()

    def write(i: int) -> None:
        status, _, _ = writer.request("POST", c.url("/api/tables/t/rows"), {**h, "content-type": "application/json"},
                                      f'{{"v": "v{i}"}}'.encode())
        assert status == 201

    try:
        for i in range(100):
            write(i)
            assert reader.request("GET", c.url("/last"))[::2] == (200, f"v{i}".encode())
        # the worst case: the reading gateway wakes to the worker's push and our request at once
        for i in range(100, 112):
            os.kill(reading_gateway, signal.SIGSTOP)
            try:
                write(i)
                reader.send("GET", c.url("/last"))
            finally:
                os.kill(reading_gateway, signal.SIGCONT)
            assert reader.receive()[::2] == (200, f"v{i}".encode())
    finally:
        for raw in conns.values():
            raw.close()



async def test_worker_cap_holds_server_wide(tmp_path: Path) -> None:
    """Each gateway evicts its own least recently used; the fork server caps the sum."""
    srv = start_server(tmp_path, "--gateways", "2", "--max-workers", "2")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenvs = [await new_cenv(client) for _ in range(4)]
        a, b = one_connection_per_gateway(srv, "/").values()
        try:
            for conn, mine in ((a, cenvs[:2]), (b, cenvs[2:])):  # no gateway alone is over the cap
                for cenv in mine:
                    assert conn.request("GET", f"/{cenv}/")[0] == 200
            deadline = time.monotonic() + 15
            while len(srv.workers()) > 2 and time.monotonic() < deadline:
                await trio.sleep(0.05)
            assert len(srv.workers()) == 2
            for conn, mine in ((a, cenvs[:2]), (b, cenvs[2:])):  # all still served
                for cenv in mine:
                    assert conn.request("GET", f"/{cenv}/")[0] == 200
        finally:
            a.close()
            b.close()
    finally:
        assert srv.stop() == 0
