"""SIGTERM, as systemd sends it to the service (KillMode=mixed: to the main process only): the
server stops within the unit's TimeoutStopSec, leaves no worker behind, and loses no write it had
acknowledged."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
import trio

from support import bearer, login, new_cenv, processes_mentioning, sql, start_server
from test_deploy import stop_timeout


@pytest.mark.parametrize("gateways", ["1", "2"])
async def test_sigterm_stops_in_time_without_orphans_or_lost_writes(tmp_path: Path, gateways: str) -> None:
    srv = start_server(tmp_path, "--gateways", gateways)
    acknowledged: dict[str, list[int]] = {}
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        cenvs = [await new_cenv(client) for _ in range(3)]
        tokens = {}
        for c in cenvs:
            tokens[c] = await login(client, c)
            r = await client.post(f"/{c}/api/tables", headers=bearer(tokens[c]),
                                  json={"sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"})
            assert r.status_code == 201
            acknowledged[c] = []
        assert len(srv.wait_workers(3)) == 3

        def writer(c: str) -> None:
            """Blocking client in a thread: an upload cut off by the stop is abandoned cleanly."""
            i = 0
            with httpx.Client(base_url=srv.url, timeout=30) as sync:
                while True:
                    i += 1
                    try:
                        r = sync.post(f"/{c}/api/tables/notes/rows", headers=bearer(tokens[c]), json={"body": f"n{i}"})
                    except httpx.TransportError:
                        return  # the server has stopped listening
                    if r.status_code != 201:
                        return  # refused (503 while stopping): not acknowledged
                    acknowledged[c].append(r.json()["id"])

        async with trio.open_nursery() as nursery:
            for c in cenvs:
                nursery.start_soon(trio.to_thread.run_sync, writer, c)
                nursery.start_soon(trio.to_thread.run_sync, writer, c)
            while min(len(v) for v in acknowledged.values()) < 20:
                await trio.sleep(0.01)
            srv.proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            code = await trio.to_thread.run_sync(srv.proc.wait, stop_timeout())
            stopped_after = time.monotonic() - t0
    assert code == 0
    assert stopped_after < stop_timeout()
    # no orphan: nothing of this server is left (workers die with it, by PR_SET_PDEATHSIG too)
    assert processes_mentioning(str(srv.data)) == []
    # every acknowledged row is in the file
    for c in cenvs:
        stored = {i for (i,) in sql(srv.data, c, "SELECT id FROM notes")}
        assert set(acknowledged[c]) <= stored, c
        assert sql(srv.data, c, "PRAGMA integrity_check") == [("ok",)]
    srv.stop()
