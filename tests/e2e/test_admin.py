"""Users, config and the audit log, as an admin manages them."""

from __future__ import annotations

import httpx
import trio

from support import Server, add_user, admin_cenv, assert_safe_error, audit_count, bearer, login, sql


async def test_users_lifecycle_and_last_admin(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    n = audit_count(server.data, c.id)
    r = await client.post(c.url("/api/users"), headers=h, json={"username": "carol", "password": "carol's pass", "role": "editor"})
    assert r.status_code == 201
    carol = r.json()
    assert set(carol) == {"id", "username", "role", "disabled", "created_at", "updated_at"}
    assert audit_count(server.data, c.id) == n + 1
    users = (await client.get(c.url("/api/users"), headers=h)).json()["users"]
    assert [u["username"] for u in users] == ["admin", "carol"]
    assert "argon2" not in (await client.get(c.url("/api/users"), headers=h)).text
    assert_safe_error(await client.post(c.url("/api/users"), headers=h, json={"username": "CAROL", "password": "x" * 10}), 409)
    assert_safe_error(await client.post(c.url("/api/users"), headers=h, json={"username": "dave", "password": "x" * 10, "role": "anon"}), 400)
    # the last admin can be neither demoted, disabled nor deleted
    assert_safe_error(await client.patch(c.url("/api/users/1"), headers=h, json={"role": "user"}), 409, "conflict")
    assert_safe_error(await client.patch(c.url("/api/users/1"), headers=h, json={"disabled": True}), 409)
    assert_safe_error(await client.delete(c.url("/api/users/1"), headers=h), 409)
    assert audit_count(server.data, c.id) == n + 1
    # with a second admin it can
    await client.patch(c.url(f"/api/users/{carol['id']}"), headers=h, json={"role": "admin"})
    assert audit_count(server.data, c.id) == n + 2
    carol_token = await login(client, c.id, "carol", "carol's pass")
    r = await client.patch(c.url("/api/users/1"), headers=bearer(carol_token), json={"role": "user"})
    assert r.status_code == 200 and r.json()["role"] == "user"
    # demotion revoked the old admin's sessions at once
    assert_safe_error(await client.get(c.url("/api/users"), headers=h), 401)
    assert_safe_error(await client.get(c.url("/api/users/1"), headers=bearer(carol_token)), 405)
    assert_safe_error(await client.patch(c.url("/api/users/999"), headers=bearer(carol_token), json={"role": "x"}), 404)
    assert_safe_error(await client.patch(c.url("/api/users/abc"), headers=bearer(carol_token), json={"role": "x"}), 404)


async def test_disable_delete_and_reset_revoke_sessions(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    t1 = await add_user(client, c, "erin")
    uid = (await client.get(c.url("/auth/me"), headers=bearer(t1))).json()["id"]
    r = await client.patch(c.url(f"/api/users/{uid}"), headers=h, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert_safe_error(await client.get(c.url("/auth/me"), headers=bearer(t1)), 401)
    assert_safe_error(await client.post(c.url("/auth/login"), json={"username": "erin", "password": "user password"}), 401)
    await client.patch(c.url(f"/api/users/{uid}"), headers=h, json={"disabled": False, "password": "reset password"})
    t2 = await login(client, c.id, "erin", "reset password")
    assert (await client.delete(c.url(f"/api/users/{uid}"), headers=h)).status_code == 204
    assert_safe_error(await client.get(c.url("/auth/me"), headers=bearer(t2)), 401)
    assert sql(server.data, c.id, "SELECT count(*) FROM _wce_sessions WHERE user_id = ?", uid)[0][0] == 0


async def test_config_validated_applied_and_audited(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    cfg = (await client.get(c.url("/api/config"), headers=h)).json()
    assert cfg == {"registration": "closed", "session_ttl_seconds": 604800, "default_role": "user",
                   "rate_limit_per_minute": 0, "memory_mb": 256, "cpu_ms_per_request": 2000, "max_db_mb": 1024,
                   "caps": {"memory_mb": 256, "cpu_ms_per_request": 2000, "max_db_mb": 1024}}
    n = audit_count(server.data, c.id)
    for bad in ({"registration": "maybe"}, {"session_ttl_seconds": 5}, {"session_ttl_seconds": "60"},
                {"default_role": "admin"}, {"memory_mb": 1}, {"nope": 1}, {"cpu_ms_per_request": True}, {}):
        assert_safe_error(await client.patch(c.url("/api/config"), headers=h, json=bad), 400)
    # one bad key refuses the whole change
    assert_safe_error(await client.patch(c.url("/api/config"), headers=h, json={"registration": "open", "memory_mb": 1}), 400)
    assert audit_count(server.data, c.id) == n
    r = await client.patch(c.url("/api/config"), headers=h, json={"registration": "open", "default_role": "member",
                                                                   "session_ttl_seconds": 120})
    assert r.status_code == 200 and r.json()["registration"] == "open"
    assert audit_count(server.data, c.id) == n + 1
    # applied at once: registration opens, with the new default role and session lifetime
    r = await client.post(c.url("/auth/register"), json={"username": "frank", "password": "frank's pass"})
    assert r.status_code == 201 and r.json()["user"]["role"] == "member"
    r = await client.post(c.url("/auth/login"), json={"username": "frank", "password": "frank's pass"})
    assert 100 < r.json()["expires_at"] - int(__import__("time").time()) <= 121


async def test_rate_limit_per_cenv_and_client(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    other = await admin_cenv(client)
    h = bearer(c.admin)
    assert (await client.patch(c.url("/api/config"), headers=h, json={"rate_limit_per_minute": 5})).status_code == 200
    statuses = [(await client.get(c.url("/auth/me"), headers=h)).status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    r = await client.get(c.url("/auth/me"), headers=h)
    assert_safe_error(r, 429, "rate_limited")
    assert 0 < int(r.headers["retry-after"]) <= 60
    # another cenv is not affected
    assert (await client.get(other.url("/auth/me"), headers=bearer(other.admin))).status_code == 200


async def test_audit_pages_newest_first(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v)"})
    await client.post(c.url("/api/tables/t/rows"), headers=h, json=[{"v": i} for i in range(5)])
    first = (await client.get(c.url("/api/audit"), headers=h, params={"limit": 3})).json()
    assert [e["action"] for e in first["entries"]] == ["row.insert"] * 3
    assert first["entries"][0]["target"] == "t/5" and first["entries"][0]["actor"] == "admin"
    assert first["entries"][0]["detail"] == {"columns": ["v"]}
    ids = [e["id"] for e in first["entries"]]
    assert ids == sorted(ids, reverse=True)
    rest = (await client.get(c.url("/api/audit"), headers=h, params={"before": first["next"], "limit": 100})).json()
    actions = [e["action"] for e in rest["entries"]]
    assert actions == ["row.insert", "row.insert", "table.create", "auth.login", "cenv.create"]
    assert rest["next"] is None
    assert_safe_error(await client.get(c.url("/api/audit"), headers=h, params={"limit": "x"}), 400)


async def test_concurrent_writers_keep_one_audit_row_each(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v)"})
    n = audit_count(server.data, c.id)

    async def write(i: int) -> None:
        assert (await client.post(c.url("/api/tables/t/rows"), headers=h, json={"v": i})).status_code == 201

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(write, i)
    assert sql(server.data, c.id, "SELECT count(*) FROM t")[0][0] == 20
    assert audit_count(server.data, c.id) == n + 20
