"""Scripts that kill their worker (finding L1): a Starlark allocation that fails under the cenv's
memory cap aborts the process (SIGABRT), a value nested 200,000 deep overflows its stack when it
is encoded (SIGSEGV). The request that did it is answered with the cause, the others in flight are
sent again, a script that keeps doing it is disabled, and sources the compiler cannot survive are
refused when saved."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from support import Cenv, Server, admin_cenv, assert_safe_error, bearer, burst, link_every_gateway, sql, worker_of

ABORT = "def handle_request(ctx):\n    return {'x': [0] * int(ctx.query.get('n', '2000000000'))}\n"
DEEP = ("def handle_request(ctx):\n    x = []\n    for i in range(200000):\n        x = [x]\n"
        "    return {'n': len(json.encode(x))}\n")
SPIN_THEN_ABORT = ("def handle_request(ctx):\n    t = 0\n    for i in range(30000000):\n        t = (t + i) % 7\n"
                   "    return {'x': [t] * 2000000000}\n")
OK = "def handle_request(ctx):\n    return {'ok': True}\n"
MEMORY = "the script ran past the cenv's memory cap"
DISABLED = "this endpoint is disabled after crashing its worker 3 times; save it again to re-enable"


async def endpoint(client: httpx.AsyncClient, c: Cenv, path: str, source: str, sid: int | None = None) -> int:
    body = {"method": "GET", "path": path, "source": source, "access": "public"}
    if sid is None:
        r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin), json=body)
        assert r.status_code == 201, r.text
    else:
        r = await client.put(c.url(f"/api/endpoints/{sid}"), headers=bearer(c.admin), json=body)
        assert r.status_code == 200, r.text
    return int(r.json()["id"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def audit(server: Server, cenv: str, action: str) -> list[tuple[str, str]]:
    return [(t, d) for t, d in sql(server.data, cenv, "SELECT target, detail FROM _wce_audit_log WHERE action = ?"
                                   " ORDER BY id", action)]


async def test_the_request_that_aborts_its_worker_is_told_why(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    sid = await endpoint(client, c, "/boom", ABORT)
    body = assert_safe_error(await client.get(c.url("/fn/boom")), 503, "unavailable")
    assert body["error"]["message"] == MEMORY  # was "the cenv's worker stopped; try again"
    body = assert_safe_error(await client.get(c.url("/fn/boom"), headers=bearer(c.admin)), 503, "unavailable")
    assert body["error"]["message"] == f"{MEMORY} (endpoint {sid})"  # an admin sees which script
    assert (await client.get(c.url("/auth/me"), headers=bearer(c.admin))).status_code == 200
    # each worker that started after a crash recorded it against the script
    crashed = audit(server, c.id, "script.crashed")
    assert [t for t, _ in crashed] == [f"endpoint:{sid}"] * 2
    assert all('"cause":"memory"' in d and '"signal":6' in d for _, d in crashed)


async def test_a_value_nested_too_deep_crashes_the_worker_and_is_told_why(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    sid = await endpoint(client, c, "/deep", DEEP)
    body = assert_safe_error(await client.get(c.url("/fn/deep"), headers=bearer(c.admin)), 503, "unavailable")
    assert body["error"]["message"].startswith("the script crashed the cenv's worker: it ran out of stack")
    assert body["error"]["message"].endswith(f"(endpoint {sid})")
    assert (await client.get(c.url("/auth/me"), headers=bearer(c.admin))).status_code == 200


async def test_requests_in_flight_when_a_script_kills_the_worker_are_sent_again(client: httpx.AsyncClient,
                                                                              server: Server) -> None:
    c = await admin_cenv(client)
    await endpoint(client, c, "/spin", SPIN_THEN_ABORT)
    await endpoint(client, c, "/ok", OK)
    await link_every_gateway(server, c.id)  # so that every gateway has requests in flight on the worker
    pid = worker_of(server, c.id)
    cpu0 = cpu_seconds(pid)
    results: dict[str, httpx.Response] = {}
    others: list[httpx.Response] = []

    async def spin() -> None:
        results["spin"] = await client.get(c.url("/fn/spin"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spin)
        # once the worker runs the script (its CPU time grows: it reads nothing meanwhile), the
        # others reach it and wait, received and unanswered, until the script kills it
        while cpu_seconds(pid) - cpu0 < 0.1 and "spin" not in results:  # the loop takes ~0.5 s of CPU
            await trio.sleep(0.01)
        assert "spin" not in results
        others = await burst(server, 6, "GET", c.url("/fn/ok"))
    assert [r.status_code for r in others] == [200] * 6, [r.text for r in others]  # were 503
    assert assert_safe_error(results["spin"], 503, "unavailable")["error"]["message"] == MEMORY


async def test_a_script_that_keeps_crashing_its_worker_is_disabled_until_saved(client: httpx.AsyncClient,
                                                                             server: Server) -> None:
    c = await admin_cenv(client)
    sid = await endpoint(client, c, "/boom", ABORT)
    for _ in range(3):
        assert assert_safe_error(await client.get(c.url("/fn/boom")), 503)["error"]["message"] == MEMORY
    # the worker started after the third crash recorded it: three within ten minutes
    body = assert_safe_error(await client.get(c.url("/fn/boom")), 503, "unavailable")
    assert body["error"]["message"] == DISABLED
    pid = worker_of(server, c.id)
    assert_safe_error(await client.get(c.url("/fn/boom"), headers=bearer(c.admin)), 503, "unavailable")
    assert worker_of(server, c.id) == pid  # refused without running: the worker lives on
    assert [t for t, _ in audit(server, c.id, "script.crashed")] == [f"endpoint:{sid}"] * 3
    [(target, detail)] = audit(server, c.id, "script.disabled")
    assert target == f"endpoint:{sid}" and '"crashes":3' in detail
    # the test panel does not run it either
    r = await client.post(c.url(f"/api/endpoints/{sid}/test"), headers=bearer(c.admin), json={})
    assert r.json()["error"]["message"] == DISABLED
    # saving it again enables it
    await endpoint(client, c, "/boom", ABORT, sid)
    assert (await client.get(c.url("/fn/boom"), params={"n": "3"})).json() == {"x": [0, 0, 0]}


async def test_sources_nested_past_what_the_compiler_survives_are_refused_at_save(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    cases = [
        # compiles (the compiler survives 2,350 levels of lists), but is refused, with its line
        ("def handle_request(ctx):\n    return {'x': " + "[" * 300 + "]" * 300 + "}\n", 2),
        # would crash the compiler (about 720 levels): it was refused without a line
        ("X = " + "[lambda: " * 800 + "1" + "]" * 800 + "\ndef handle_request(ctx):\n    return {}\n", 1),
    ]
    for source, line in cases:
        r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin),
                              json={"method": "GET", "path": "/x", "source": source})
        message = assert_safe_error(r, 422, "invalid")["error"]["message"]
        assert f"line {line}, column" in message and "nested over 200 levels deep" in message, message
    # a long flat literal is not deep
    flat = "X = [" + ", ".join(str(i) for i in range(20000)) + "]\ndef handle_request(ctx):\n    return {'n': len(X)}\n"
    r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin),
                          json={"method": "GET", "path": "/flat", "source": flat, "access": "public"})
    assert r.status_code == 201, r.text
    assert (await client.get(c.url("/fn/flat"))).json() == {"n": 20000}
