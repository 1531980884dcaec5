"""The data API against the real server: tables, rows, filters, cursors, search, audit rows."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from support import Cenv, Server, add_user, admin_cenv, assert_safe_error, audit_count, bearer, sql


async def make_notes(client: httpx.AsyncClient, c: Cenv, full_text: bool = False) -> None:
    body: dict[str, object] = {"name": "notes", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True},
        {"name": "title", "type": "TEXT", "not_null": True},
        {"name": "body", "type": "TEXT"},
        {"name": "owner", "type": "INTEGER"},
        {"name": "score", "type": "REAL", "default": 0},
        {"name": "data", "type": "BLOB"},
    ]}
    if full_text:
        body["full_text"] = ["title", "body"]
    r = await client.post(c.url("/api/tables"), headers=bearer(c.admin), json=body)
    assert r.status_code == 201, r.text


async def test_create_list_drop_tables_with_audit(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    n0 = audit_count(server.data, c.id)
    await make_notes(client, c)
    assert audit_count(server.data, c.id) == n0 + 1
    r = await client.post(c.url("/api/tables"), headers=bearer(c.admin),
                          json={"sql": "CREATE TABLE tags (name TEXT PRIMARY KEY, note_id INTEGER REFERENCES notes(id)) WITHOUT ROWID"})
    assert r.status_code == 201, r.text
    assert r.json()["primary_key"] == ["name"]
    r = await client.post(c.url("/api/tables"), headers=bearer(c.admin), json={"sql": "CREATE INDEX notes_owner ON notes(owner)"})
    assert r.status_code == 201 and r.json() == {"name": "notes_owner"}
    assert audit_count(server.data, c.id) == n0 + 3
    tables = (await client.get(c.url("/api/tables"), headers=bearer(c.admin))).json()["tables"]
    assert [t["name"] for t in tables] == ["notes", "tags"]
    notes = tables[0]
    assert notes["primary_key"] == ["id"]
    assert [(col["name"], col["type"]) for col in notes["columns"]][:3] == [("id", "INTEGER"), ("title", "TEXT"), ("body", "TEXT")]
    assert (await client.delete(c.url("/api/tables/tags"), headers=bearer(c.admin))).status_code == 204
    assert audit_count(server.data, c.id) == n0 + 4
    assert_safe_error(await client.delete(c.url("/api/tables/tags"), headers=bearer(c.admin)), 404)


@pytest.mark.parametrize("body,status", [
    ({"sql": "DROP TABLE notes"}, 422),
    ({"sql": "CREATE VIEW v AS SELECT 1"}, 422),
    ({"sql": "CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END"}, 422),
    ({"sql": "CREATE TABLE a(x); DROP TABLE notes"}, 422),
    ({"sql": "CREATE TABLE _wce_evil(x)"}, 422),
    ({"sql": "CREATE TABLE stolen AS SELECT * FROM _wce_users"}, 422),
    ({"sql": "CREATE TEMP TABLE t(x)"}, 422),
    ({"sql": "CREATE TABLE broken (x"}, 422),
    ({"sql": "PRAGMA writable_schema = 1"}, 422),
    ({"sql": "ATTACH DATABASE '/etc/passwd' AS p"}, 422),
    ({"name": "_wce_users", "columns": [{"name": "x"}]}, 400),
    ({"name": "sqlite_x", "columns": [{"name": "x"}]}, 400),
    ({"name": "bad name", "columns": [{"name": "x"}]}, 400),
    ({"name": "t\"; DROP TABLE notes; --", "columns": [{"name": "x"}]}, 400),
    ({"name": "t", "columns": [{"name": "x\" TEXT); DROP TABLE notes; --"}]}, 400),
    ({"name": "t", "columns": [{"name": "x", "type": "TEXT); DROP TABLE notes; --"}]}, 400),
    ({"name": "t", "columns": [{"name": "x", "default": {"a": 1}}]}, 400),
    ({"name": "t", "columns": []}, 400),
    ({"name": "notes", "columns": [{"name": "x"}]}, 422),
])
async def test_bad_table_definitions_change_nothing(client: httpx.AsyncClient, server: Server, body: dict[str, object], status: int) -> None:
    c = await admin_cenv(client)
    await make_notes(client, c)
    before = sql(server.data, c.id, "SELECT name, sql FROM sqlite_schema ORDER BY name")
    n = audit_count(server.data, c.id)
    r = await client.post(c.url("/api/tables"), headers=bearer(c.admin), json=body)
    assert_safe_error(r, status)
    assert sql(server.data, c.id, "SELECT name, sql FROM sqlite_schema ORDER BY name") == before
    assert audit_count(server.data, c.id) == n


async def test_rows_crud_types_and_audit(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    await make_notes(client, c)
    h = bearer(c.admin)
    n = audit_count(server.data, c.id)
    blob = base64.b64encode(b"\x00\x01binary").decode()
    r = await client.post(c.url("/api/tables/notes/rows"), headers=h,
                          json={"title": "first", "body": {"k": [1, 2]}, "owner": 1, "score": 1.5, "data": blob})
    assert r.status_code == 201, r.text
    row = r.json()
    assert row == {"id": 1, "title": "first", "body": '{"k":[1,2]}', "owner": 1, "score": 1.5, "data": blob}
    assert sql(server.data, c.id, "SELECT data FROM notes WHERE id = 1")[0][0] == b"\x00\x01binary"
    # each column takes the JSON type its declared type asks for
    for bad in ({"title": "x", "owner": "one"}, {"title": "x", "score": "high"}, {"title": 5},
                {"title": "x", "data": "not base64!"}, {"title": "x", "owner": 1.5}):
        assert_safe_error(await client.post(c.url("/api/tables/notes/rows"), headers=h, json=bad), 400)
    assert audit_count(server.data, c.id) == n + 1
    bulk = await client.post(c.url("/api/tables/notes/rows"), headers=h, json=[{"title": f"n{i}", "owner": 2} for i in range(3)])
    assert bulk.status_code == 201 and [x["id"] for x in bulk.json()] == [2, 3, 4]
    assert audit_count(server.data, c.id) == n + 4  # one audit row per row
    # a bulk insert with one bad row writes nothing
    bad = await client.post(c.url("/api/tables/notes/rows"), headers=h, json=[{"title": "ok"}, {"title": None}])
    assert_safe_error(bad, 422)
    assert sql(server.data, c.id, "SELECT count(*) FROM notes")[0][0] == 4
    assert audit_count(server.data, c.id) == n + 4
    got = await client.get(c.url("/api/tables/notes/rows/1"), headers=h)
    assert got.json()["title"] == "first"
    p = await client.patch(c.url("/api/tables/notes/rows/1"), headers=h, json={"title": "changed", "score": 2})
    assert p.status_code == 200 and p.json()["title"] == "changed" and p.json()["score"] == 2
    assert audit_count(server.data, c.id) == n + 5
    detail = json.loads(sql(server.data, c.id, "SELECT detail FROM _wce_audit_log ORDER BY id DESC LIMIT 1")[0][0])
    assert detail == {"columns": ["title", "score"]}  # names, never values
    assert (await client.delete(c.url("/api/tables/notes/rows/1"), headers=h)).status_code == 204
    assert audit_count(server.data, c.id) == n + 6
    assert_safe_error(await client.get(c.url("/api/tables/notes/rows/1"), headers=h), 404)
    assert_safe_error(await client.delete(c.url("/api/tables/notes/rows/1"), headers=h), 404)
    assert_safe_error(await client.patch(c.url("/api/tables/notes/rows/99"), headers=h, json={"title": "x"}), 404)
    assert_safe_error(await client.get(c.url("/api/tables/notes/rows/abc"), headers=h), 404)
    assert audit_count(server.data, c.id) == n + 6
    # blobs come back as base64
    sql(server.data, c.id, "INSERT INTO notes(id, title, data) VALUES (50, 'blob', x'00ff10')")
    assert (await client.get(c.url("/api/tables/notes/rows/50"), headers=h)).json()["data"] == base64.b64encode(b"\x00\xff\x10").decode()


async def test_list_filters_order_and_cursor(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    await make_notes(client, c)
    h = bearer(c.admin)
    rows = [{"title": f"t{i:02d}", "owner": i % 3, "score": (i * 7) % 10 if i % 5 else None} for i in range(25)]
    assert (await client.post(c.url("/api/tables/notes/rows"), headers=h, json=rows)).status_code == 201

    async def all_pages(params: dict[str, str]) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        after = None
        for _ in range(50):
            q = dict(params, **({"after": after} if after else {}))
            r = await client.get(c.url("/api/tables/notes/rows"), headers=h, params=q)
            assert r.status_code == 200, r.text
            out += r.json()["rows"]
            after = r.json()["next"]
            if after is None:
                return out
        raise AssertionError("cursor never ended")

    assert [r["id"] for r in await all_pages({"limit": "4"})] == list(range(1, 26))
    assert [r["id"] for r in await all_pages({"limit": "4", "order": "-id"})] == list(range(25, 0, -1))
    by_score = await all_pages({"limit": "3", "order": "score"})
    assert len(by_score) == 25 and len({r["id"] for r in by_score}) == 25  # NULLs too, none twice
    expected = sorted(range(1, 26), key=lambda i: (rows[i - 1]["score"] is not None, rows[i - 1]["score"] or 0, i))
    assert [r["id"] for r in by_score] == expected
    desc = await all_pages({"limit": "7", "order": "-score"})
    assert [r["id"] for r in desc] == sorted(range(1, 26), key=lambda i: (rows[i - 1]["score"] is None, -(rows[i - 1]["score"] or 0), -i))
    owner1 = await all_pages({"owner": "1", "limit": "2"})
    assert {r["owner"] for r in owner1} == {1} and len(owner1) == 8
    gt = (await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"id__gt": "20"})).json()["rows"]
    assert [r["id"] for r in gt] == [21, 22, 23, 24, 25]
    inn = (await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"id__in": "3,5,99"})).json()["rows"]
    assert [r["id"] for r in inn] == [3, 5]
    like = (await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"title__like": "t1%"})).json()["rows"]
    assert len(like) == 10
    ne = (await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"owner__ne": "0", "limit": "100"})).json()["rows"]
    assert len(ne) == 16
    lte = (await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"id__lte": "2", "id__gte": "2"})).json()["rows"]
    assert [r["id"] for r in lte] == [2]
    default = (await client.get(c.url("/api/tables/notes/rows"), headers=h)).json()
    assert len(default["rows"]) == 25 and default["next"] is None


@pytest.mark.parametrize("params", [
    {"nope": "1"},
    {"title__regexp": "x"},
    {"order": "title; DROP TABLE notes"},
    {"order": "-nope"},
    {"limit": "0"},
    {"limit": "1001"},
    {"limit": "ten"},
    {"after": "%%%not-a-cursor"},
    {"after": base64.urlsafe_b64encode(b'["x"').decode()},
    {"id\" OR 1=1 --": "1"},
    {"search": "anything"},  # no full-text index on this table
])
async def test_hostile_queries_are_400(client: httpx.AsyncClient, server: Server, params: dict[str, str]) -> None:
    c = await admin_cenv(client)
    await make_notes(client, c)
    await client.post(c.url("/api/tables/notes/rows"), headers=bearer(c.admin), json={"title": "x"})
    r = await client.get(c.url("/api/tables/notes/rows"), headers=bearer(c.admin), params=params)
    assert_safe_error(r, 400, "bad_request")
    assert sql(server.data, c.id, "SELECT count(*) FROM notes")[0][0] == 1


async def test_hostile_values_are_just_values(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    await make_notes(client, c)
    h = bearer(c.admin)
    evil = "x'); DROP TABLE notes; --"
    r = await client.post(c.url("/api/tables/notes/rows"), headers=h, json={"title": evil})
    assert r.status_code == 201 and r.json()["title"] == evil
    found = (await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"title": evil})).json()["rows"]
    assert len(found) == 1
    for name in ("notes\"; DROP TABLE notes; --", "_wce_users", "sqlite_schema", "notes_fts"):
        assert_safe_error(await client.get(c.url(f"/api/tables/{name}/rows"), headers=h), 404)
    assert_safe_error(await client.post(c.url("/api/tables/notes/rows"), headers=h, json={"title\" = 1 --": "x"}), 400)
    assert_safe_error(await client.post(c.url("/api/tables/notes/rows"), headers=h, json={"title": 2**70}), 400)
    assert_safe_error(await client.post(c.url("/api/tables/notes/rows"), headers=h, json="just a string"), 400)
    assert_safe_error(await client.post(c.url("/api/tables/notes/rows"), headers=h, json={}), 400)
    assert sql(server.data, c.id, "SELECT count(*) FROM notes")[0][0] == 1


async def test_full_text_search_ranked_and_policed(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    await make_notes(client, c, full_text=True)
    h = bearer(c.admin)
    docs = [
        {"title": "apple pie", "body": "apple apple apple", "owner": 1},
        {"title": "banana", "body": "one apple", "owner": 2},
        {"title": "cherry", "body": "nothing here", "owner": 1},
    ]
    await client.post(c.url("/api/tables/notes/rows"), headers=h, json=docs)
    r = await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"search": "apple"})
    assert r.status_code == 200, r.text
    assert [x["title"] for x in r.json()["rows"]] == ["apple pie", "banana"]
    # kept in step on update and delete
    await client.patch(c.url("/api/tables/notes/rows/3"), headers=h, json={"body": "apple now"})
    await client.delete(c.url("/api/tables/notes/rows/2"), headers=h)
    titles = [x["title"] for x in (await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"search": "apple"})).json()["rows"]]
    assert sorted(titles) == ["apple pie", "cherry"]
    assert_safe_error(await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"search": "\"unclosed"}), 400)
    assert_safe_error(await client.get(c.url("/api/tables/notes/rows"), headers=h, params={"search": "AND OR"}), 400)
    # same policies as any read
    user = await add_user(client, c, "alice")
    await client.put(c.url("/api/permissions/notes"), headers=h, json={"roles": {"user": {"select": True}}})
    await client.put(c.url("/api/policies/notes"), headers=h, json=[{"role": "user", "action": "select", "using": "owner = 2"}])
    r = await client.get(c.url("/api/tables/notes/rows"), headers=bearer(user), params={"search": "apple"})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == []
    await client.put(c.url("/api/policies/notes"), headers=h, json=[{"role": "user", "action": "select", "using": "owner = 1"}])
    seen = (await client.get(c.url("/api/tables/notes/rows"), headers=bearer(user), params={"search": "apple"})).json()["rows"]
    assert sorted(x["title"] for x in seen) == ["apple pie", "cherry"]
