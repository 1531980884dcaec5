"""The permission matrix: every data-API route x every kind of caller, from a table of expectations.

Callers: a valid token of another cenv, the anonymous caller, a user whose role has no grant on
the table, a user whose role has every grant, and the admin. Each route's successful callers are
the positive control for its denials. Destructive routes act on a different row (or a freshly
made table or user) for each caller, so one caller's success cannot hide another's answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from support import Cenv, add_user, admin_cenv, assert_safe_error, bearer

CALLERS = ("other", "anon", "nogrant", "granted", "admin")


@dataclass
class World:
    c: Cenv
    tokens: dict[str, str | None]
    client: httpx.AsyncClient
    targets: list[int]  # user ids to patch/delete, one per caller


Req = Callable[[World, int], Awaitable[httpx.Response]]


def req(method: str, path: str, json: object = None) -> Callable[[Callable[[World, int], Awaitable[None]] | None], Req]:
    def make(prepare: Callable[[World, int], Awaitable[None]] | None = None) -> Req:
        async def run(w: World, i: int) -> httpx.Response:
            if prepare:
                await prepare(w, i)
            p = path.format(i=i + 1, uid=w.targets[i])
            body = json(i) if callable(json) else json
            token = w.tokens[CALLERS[i]]
            headers = bearer(token) if token else {}
            return await w.client.request(method, w.c.url(p), headers=headers, json=body)
        return run
    return make


async def recreate_table(w: World, i: int) -> None:
    h = bearer(w.c.admin)
    await w.client.post(w.c.url("/api/tables"), headers=h, json={"sql": f"CREATE TABLE gone{i + 1} (x)"})


ADMIN_ONLY = {"other": 401, "anon": 401, "nogrant": 403, "granted": 403}

MATRIX: list[tuple[str, Req, dict[str, int]]] = [
    ("GET tables", req("GET", "/api/tables")(), {"other": 401, "anon": 200, "nogrant": 200, "granted": 200, "admin": 200}),
    ("POST tables", req("POST", "/api/tables", lambda i: {"sql": f"CREATE TABLE new{i} (x)"})(), {**ADMIN_ONLY, "admin": 201}),
    ("DELETE tables/t", req("DELETE", "/api/tables/gone{i}")(recreate_table), {**ADMIN_ONLY, "admin": 204}),
    ("GET rows", req("GET", "/api/tables/t/rows")(), {"other": 401, "anon": 401, "nogrant": 403, "granted": 200, "admin": 200}),
    ("GET rows/pk", req("GET", "/api/tables/t/rows/{i}")(), {"other": 401, "anon": 401, "nogrant": 403, "granted": 200, "admin": 200}),
    ("POST rows", req("POST", "/api/tables/t/rows", {"v": "new"})(), {"other": 401, "anon": 401, "nogrant": 403, "granted": 201, "admin": 201}),
    ("PATCH rows/pk", req("PATCH", "/api/tables/t/rows/{i}", {"v": "changed"})(), {"other": 401, "anon": 401, "nogrant": 403, "granted": 200, "admin": 200}),
    ("DELETE rows/pk", req("DELETE", "/api/tables/t/rows/{i}")(), {"other": 401, "anon": 401, "nogrant": 403, "granted": 204, "admin": 204}),
    ("GET permissions", req("GET", "/api/permissions/t")(), {**ADMIN_ONLY, "admin": 200}),
    ("PUT permissions", req("PUT", "/api/permissions/t", {"roles": {"editor": {"select": True, "insert": True, "update": True, "delete": True}}})(), {**ADMIN_ONLY, "admin": 200}),
    ("GET policies", req("GET", "/api/policies/t")(), {**ADMIN_ONLY, "admin": 200}),
    ("PUT policies", req("PUT", "/api/policies/t", [])(), {**ADMIN_ONLY, "admin": 200}),
    ("GET users", req("GET", "/api/users")(), {**ADMIN_ONLY, "admin": 200}),
    ("POST users", req("POST", "/api/users", lambda i: {"username": f"made{i}", "password": "a password"})(), {**ADMIN_ONLY, "admin": 201}),
    ("PATCH users/id", req("PATCH", "/api/users/{uid}", {"role": "viewer"})(), {**ADMIN_ONLY, "admin": 200}),
    ("DELETE users/id", req("DELETE", "/api/users/{uid}")(), {**ADMIN_ONLY, "admin": 204}),
    ("GET config", req("GET", "/api/config")(), {**ADMIN_ONLY, "admin": 200}),
    ("PATCH config", req("PATCH", "/api/config", {"session_ttl_seconds": 3600})(), {**ADMIN_ONLY, "admin": 200}),
    ("GET audit", req("GET", "/api/audit")(), {**ADMIN_ONLY, "admin": 200}),
]


@pytest.mark.parametrize("name,run,expected", MATRIX, ids=[m[0] for m in MATRIX])
async def test_permission_matrix(client: httpx.AsyncClient, name: str, run: Req, expected: dict[str, int]) -> None:
    c = await admin_cenv(client)
    other = await admin_cenv(client)
    h = bearer(c.admin)
    assert (await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"})).status_code == 201
    await client.post(c.url("/api/tables/t/rows"), headers=h, json=[{"v": f"row{i}"} for i in range(1, 6)])
    await client.put(c.url("/api/permissions/t"), headers=h,
                     json={"roles": {"editor": {"select": True, "insert": True, "update": True, "delete": True}}})
    nogrant = await add_user(client, c, "nogrant", "user")
    granted = await add_user(client, c, "granted", "editor")
    targets = []
    for i in range(5):
        r = await client.post(c.url("/api/users"), headers=h, json={"username": f"target{i}", "password": "a password"})
        targets.append(r.json()["id"])
    w = World(c, {"other": other.admin, "anon": None, "nogrant": nogrant, "granted": granted, "admin": c.admin}, client, targets)
    got = {}
    for i, caller in enumerate(CALLERS):
        r = await run(w, i)
        got[caller] = r.status_code
        if r.status_code >= 400:
            assert_safe_error(r, r.status_code)
    assert got == expected
    assert any(s < 300 for s in got.values())  # every row of the matrix has a positive control
