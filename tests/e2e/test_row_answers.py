"""What a write answers (finding M5): as in PostgreSQL, where RETURNING needs SELECT, `POST rows`,
`PATCH rows` and `ctx.db.insert`/`ctx.db.update` answer the row only if the caller may select it
(the grant, and the select policy on the row as written); otherwise the row's key alone."""

from __future__ import annotations

import httpx

from support import Cenv, Server, add_user, admin_cenv, bearer, sql


async def salaries(client: httpx.AsyncClient, grants: dict[str, bool]) -> tuple[Cenv, str]:
    """The review's table, and a `clerk` with the given grants on it."""
    c = await admin_cenv(client)
    h = bearer(c.admin)
    r = await client.post(c.url("/api/tables"), headers=h, json={"sql":
        "CREATE TABLE salaries (id INTEGER PRIMARY KEY, name TEXT, salary INTEGER, ack INTEGER DEFAULT 0)"})
    assert r.status_code == 201, r.text
    r = await client.post(c.url("/api/tables/salaries/rows"), headers=h, json={"name": "ceo", "salary": 999999})
    assert r.status_code == 201, r.text
    r = await client.put(c.url("/api/permissions/salaries"), headers=h, json={"roles": {"clerk": grants}})
    assert r.status_code == 200, r.text
    return c, await add_user(client, c, "carl", role="clerk")


async def test_update_without_select_answers_the_key_alone(client: httpx.AsyncClient, server: Server) -> None:
    c, carl = await salaries(client, {"update": True, "insert": True})
    assert (await client.get(c.url("/api/tables/salaries/rows/1"), headers=bearer(carl))).status_code == 403
    r = await client.patch(c.url("/api/tables/salaries/rows/1"), headers=bearer(carl), json={"ack": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": 1}  # was the whole row, salary included
    assert sql(server.data, c.id, "SELECT ack FROM salaries WHERE id = 1") == [(1,)]  # the write happened
    r = await client.post(c.url("/api/tables/salaries/rows"), headers=bearer(carl), json={"name": "new", "salary": 5})
    assert r.status_code == 201 and r.json() == {"id": 2}
    r = await client.post(c.url("/api/tables/salaries/rows"), headers=bearer(carl), json=[{"name": "a"}, {"name": "b"}])
    assert r.status_code == 201 and r.json() == [{"id": 3}, {"id": 4}]
    # with select granted too, the whole row as stored (defaults included)
    await client.put(c.url("/api/permissions/salaries"), headers=bearer(c.admin),
                     json={"roles": {"clerk": {"select": True, "update": True, "insert": True}}})
    r = await client.patch(c.url("/api/tables/salaries/rows/1"), headers=bearer(carl), json={"ack": 2})
    assert r.json() == {"id": 1, "name": "ceo", "salary": 999999, "ack": 2}
    r = await client.post(c.url("/api/tables/salaries/rows"), headers=bearer(carl), json={"name": "c"})
    assert r.json() == {"id": 5, "name": "c", "salary": None, "ack": 0}


async def test_rows_hidden_by_a_narrower_select_policy_answer_the_key_alone(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql":
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, owner INTEGER, body TEXT)"})
    alice = await add_user(client, c, "alice")
    aid = (await client.get(c.url("/auth/me"), headers=bearer(alice))).json()["id"]
    await client.put(c.url("/api/permissions/docs"), headers=h,
                     json={"roles": {"user": {"select": True, "insert": True, "update": True}}})
    r = await client.put(c.url("/api/policies/docs"), headers=h, json=[
        {"role": "user", "action": "select", "using": "owner = :user_id"},
        {"role": "user", "action": "update", "using": "1"}])  # wider than select
    assert r.status_code == 200, r.text
    await client.post(c.url("/api/tables/docs/rows"), headers=h, json=[
        {"id": 1, "owner": aid, "body": "alice's"}, {"id": 2, "owner": 999, "body": "secret"}])
    assert (await client.get(c.url("/api/tables/docs/rows/2"), headers=bearer(alice))).status_code == 404
    r = await client.patch(c.url("/api/tables/docs/rows/2"), headers=bearer(alice), json={"body": "touched"})
    assert r.status_code == 200 and r.json() == {"id": 2}
    r = await client.patch(c.url("/api/tables/docs/rows/1"), headers=bearer(alice), json={"body": "mine"})
    assert r.json() == {"id": 1, "owner": aid, "body": "mine"}
    # the policy is read on the row as written: giving a row away hides it in the answer too
    r = await client.patch(c.url("/api/tables/docs/rows/1"), headers=bearer(alice), json={"owner": 999})
    assert r.json() == {"id": 1}
    r = await client.post(c.url("/api/tables/docs/rows"), headers=bearer(alice), json={"owner": 999, "body": "gift"})
    assert r.status_code == 201 and r.json() == {"id": 3}


async def test_script_db_writes_answer_what_the_caller_may_read(client: httpx.AsyncClient) -> None:
    c, carl = await salaries(client, {"update": True, "insert": True})
    await client.post(c.url("/api/tables"), headers=bearer(c.admin), json={"sql": "CREATE TABLE log (msg TEXT)"})
    await client.put(c.url("/api/permissions/log"), headers=bearer(c.admin), json={"roles": {"clerk": {"insert": True}}})
    r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin), json={
        "method": "POST", "path": "/w", "access": "user", "source": '''
def handle_request(ctx):
    return {"updated": ctx.db.update("salaries", 1, {"ack": 7}),
            "inserted": ctx.db.insert("salaries", {"name": "x", "salary": 1}),
            "logged": ctx.db.insert("log", {"msg": "hi"})}
'''})
    assert r.status_code == 201, r.text
    r = await client.post(c.url("/fn/w"), headers=bearer(carl))
    assert r.status_code == 200, r.text
    assert r.json() == {"updated": {"id": 1}, "inserted": {"id": 2}, "logged": {"rowid": 1}}
    r = await client.post(c.url("/fn/w"), headers=bearer(c.admin))
    assert r.json()["updated"] == {"id": 1, "name": "ceo", "salary": 999999, "ack": 7}
