"""The review's SQL findings, reproduced against the real server: prepare-time PRAGMAs (L2),
writes to full-text shadow tables (L5), crafted cursors and integers (L6), SQL without a CPU
budget and `CREATE TABLE … AS SELECT` from SQLite's internals (I1)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from support import Cenv, Server, add_user, admin_cenv, assert_safe_error, bearer, sql


def cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def notes_cenv(client: httpx.AsyncClient, *, full_text: bool = False, n: int = 3) -> Cenv:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    body: dict[str, object] = {"name": "notes", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "title", "type": "TEXT"}]}
    if full_text:
        body["full_text"] = ["title"]
    assert (await client.post(c.url("/api/tables"), headers=h, json=body)).status_code == 201
    r = await client.post(c.url("/api/tables/notes/rows"), headers=h, json=[{"title": f"hello {i}"} for i in range(n)])
    assert r.status_code == 201, r.text
    return c


async def admin_endpoint(client: httpx.AsyncClient, c: Cenv, path: str, source: str) -> None:
    r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin),
                          json={"method": "POST", "path": path, "source": source, "access": "admin"})
    assert r.status_code == 201, r.text


# L2

@pytest.mark.parametrize("query", ["PRAGMA query_only = 1", "PRAGMA foreign_keys = 0"])
async def test_a_refused_page_query_changes_nothing(client: httpx.AsyncClient, server: Server, query: str) -> None:
    c = await notes_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE child (id INTEGER PRIMARY KEY, "
                                                               "note INTEGER REFERENCES notes(id))"})
    r = await client.post(c.url("/api/pages"), headers=h,
                          json={"path": "/p", "template": "x", "queries": {"q": query}, "access": "admin"})
    assert_safe_error(r, 422)
    # the connection is still writable (query_only) and still checks references (foreign_keys)
    r = await client.post(c.url("/api/tables/notes/rows"), headers=h, json={"title": "after"})
    assert r.status_code == 201, r.text
    assert_safe_error(await client.post(c.url("/api/tables/child/rows"), headers=h, json={"note": 999}), 422)
    assert (await client.patch(c.url("/api/config"), headers=h, json={"rate_limit_per_minute": 600})).status_code == 200


# L5

async def test_an_admin_script_cannot_corrupt_the_full_text_index(client: httpx.AsyncClient, server: Server) -> None:
    c = await notes_cenv(client, full_text=True, n=60)
    await admin_endpoint(client, c, "/corrupt", '''
def handle_request(ctx):
    return {"rows": ctx.db.query("UPDATE notes_fts_data SET block = x'ffffffffffffffff' WHERE id > 10")}
''')
    body = assert_safe_error(await client.post(c.url("/fn/corrupt"), headers=bearer(c.admin)), 422)
    assert "notes_fts_data may not be modified" in body["error"]["message"]  # SQLite's defensive mode
    r = await client.get(c.url("/api/tables/notes/rows"), headers=bearer(c.admin), params={"search": "hello", "limit": "100"})
    assert r.status_code == 200, r.text
    assert len(r.json()["rows"]) == 60
    # writes through the table still reach the index
    r = await client.post(c.url("/api/tables/notes/rows"), headers=bearer(c.admin), json={"title": "zebra"})
    assert r.status_code == 201
    r = await client.get(c.url("/api/tables/notes/rows"), headers=bearer(c.admin), params={"search": "zebra"})
    assert [x["title"] for x in r.json()["rows"]] == ["zebra"]


# L6

@pytest.mark.parametrize("params", [
    {"after": cursor({"a": 1})},
    {"after": cursor([{"x": 1}, 1]), "order": "title"},
    {"after": cursor([None, 2**64])},
    {"after": cursor([2**70, 1]), "order": "-title"},
    {"after": cursor({"o": True}), "search": "hello"},
])
async def test_crafted_cursors_are_400(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    c = await notes_cenv(client, full_text=True)
    r = await client.get(c.url("/api/tables/notes/rows"), headers=bearer(c.admin), params=params)
    assert_safe_error(r, 400, "bad_request")


@pytest.mark.parametrize("path,params", [
    ("/api/audit", {"before": "1779282181913173032960"}),  # found by `make fuzz`
    ("/api/logs", {"before": "-3095221121173905997824"}),
    ("/api/audit", {"limit": "99999999999999999999999"}),
    ("/api/tables/notes/rows", {"limit": "99999999999999999999999"}),
])
async def test_integers_out_of_range_are_400(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
    c = await notes_cenv(client)
    r = await client.get(c.url(path), headers=bearer(c.admin), params=params)
    assert_safe_error(r, 400, "bad_request")


# I1

ENDLESS = "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c)"


async def lower_cpu_budget(client: httpx.AsyncClient, c: Cenv) -> None:
    r = await client.patch(c.url("/api/config"), headers=bearer(c.admin), json={"cpu_ms_per_request": 200})
    assert r.status_code == 200, r.text


async def test_an_endless_row_policy_stops_at_the_cpu_budget(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    h = bearer(c.admin)
    await client.put(c.url("/api/permissions/notes"), headers=h, json={"roles": {"user": {"select": True}}})
    r = await client.put(c.url("/api/policies/notes"), headers=h,
                         json=[{"role": "user", "action": "select", "using": f"{ENDLESS} > 0"}])
    assert r.status_code == 200, r.text
    alice = await add_user(client, c, "alice")
    await lower_cpu_budget(client, c)
    r = await client.get(c.url("/api/tables/notes/rows"), headers=bearer(alice))
    body = assert_safe_error(r, 504, "timeout")
    assert "CPU budget" in body["error"]["message"]  # the worker stopped it, not the gateway's deadline
    assert (await client.get(c.url("/api/tables/notes/rows"), headers=h)).status_code == 200


async def test_an_endless_create_table_as_select_stops_at_the_cpu_budget(client: httpx.AsyncClient, server: Server) -> None:
    c = await notes_cenv(client)
    await lower_cpu_budget(client, c)
    r = await client.post(c.url("/api/tables"), headers=bearer(c.admin),
                          json={"sql": f"CREATE TABLE big AS SELECT {ENDLESS} AS m"})
    body = assert_safe_error(r, 504, "timeout")
    assert "CPU budget" in body["error"]["message"]
    assert sql(server.data, c.id, "SELECT count(*) FROM sqlite_schema WHERE name = 'big'") == [(0,)]
    assert (await client.get(c.url("/api/tables"), headers=bearer(c.admin))).status_code == 200


@pytest.mark.parametrize("select", ["sql FROM sqlite_master", "name FROM sqlite_schema", "* FROM dbstat"])
async def test_create_table_as_select_cannot_read_sqlite_internals(client: httpx.AsyncClient, server: Server,
                                                                   select: str) -> None:
    c = await notes_cenv(client)
    r = await client.post(c.url("/api/tables"), headers=bearer(c.admin), json={"sql": f"CREATE TABLE stolen AS SELECT {select}"})
    assert_safe_error(r, 422)
    assert sql(server.data, c.id, "SELECT count(*) FROM sqlite_schema WHERE name = 'stolen'") == [(0,)]
