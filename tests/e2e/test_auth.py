"""Authentication against the real server: tokens, sessions, throttling, audit rows."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import jwt
import trio

from support import Server, alive, assert_safe_error, bearer, login, new_cenv, sql, start_server


def audit_actions(server: Server, cenv: str) -> list[str]:
    return [r[0] for r in sql(server.data, cenv, "SELECT action FROM _wce_audit_log ORDER BY id")]


async def test_login_me_logout_and_audit(client: httpx.AsyncClient, server: Server) -> None:
    cenv = await new_cenv(client)
    r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "correct horse"})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == {"id": 1, "username": "admin", "role": "admin"}
    assert body["expires_at"] > time.time() + 3600
    cookie = r.headers["set-cookie"]
    assert f"Path=/{cenv}/" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    token = body["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "wce" and claims["aud"] == cenv and claims["sub"] == "1" and claims["role"] == "admin"
    assert {"jti", "iat", "exp"} <= set(claims)

    me = await client.get(f"/{cenv}/auth/me", headers=bearer(token))
    assert me.json() == {"id": 1, "username": "admin", "role": "admin"}
    # the cookie works as well as the header
    me2 = await client.get(f"/{cenv}/auth/me", headers={"cookie": f"wce_session={token}"})
    assert me2.status_code == 200
    out = await client.post(f"/{cenv}/auth/logout", headers=bearer(token))
    assert out.status_code == 204
    assert_safe_error(await client.get(f"/{cenv}/auth/me", headers=bearer(token)), 401, "unauthenticated")
    assert audit_actions(server, cenv) == ["cenv.create", "auth.login", "auth.logout"]


async def test_wrong_credentials_same_answer_and_audited(client: httpx.AsyncClient, server: Server) -> None:
    cenv = await new_cenv(client)
    a = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "wrong password"})
    b = await client.post(f"/{cenv}/auth/login", json={"username": "nobody", "password": "wrong password"})
    assert_safe_error(a, 401, "invalid_credentials")
    assert a.json() == b.json()
    rows = sql(server.data, cenv, "SELECT action, actor, detail FROM _wce_audit_log WHERE action = 'auth.login_failed'")
    assert [r[1] for r in rows] == ["admin", "nobody"]
    assert all("wrong password" not in (r[2] or "") or "reason" in r[2] for r in rows)


async def test_bad_bodies_are_400(client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    for body in (b"not json", b"[1,2]", b'{"username": 1, "password": "x"}', b'{"username": "admin"}'):
        r = await client.post(f"/{cenv}/auth/login", content=body, headers={"content-type": "application/json"})
        assert_safe_error(r, 400, "bad_request")


async def test_tokens_that_must_fail(client: httpx.AsyncClient, server: Server) -> None:
    a = await new_cenv(client)
    b = await new_cenv(client)
    token_a = await login(client, a)
    token_b = await login(client, b)
    # another cenv's valid token
    assert_safe_error(await client.get(f"/{a}/auth/me", headers=bearer(token_b)), 401)
    # alg: none with the same claims
    claims = jwt.decode(token_a, options={"verify_signature": False})
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    none_token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    assert_safe_error(await client.get(f"/{a}/auth/me", headers=bearer(none_token)), 401)
    # tampered: role changed, signature kept
    h, p, s = token_a.split(".")
    forged = f"{h}.{b64({**claims, 'role': 'admin', 'sub': '2'})}.{s}"
    assert_safe_error(await client.get(f"/{a}/auth/me", headers=bearer(forged)), 401)
    # expired, correctly signed with the cenv's own secret (read from the file, as an attacker cannot)
    secret = bytes.fromhex(sql(server.data, a, "SELECT value FROM _wce_meta WHERE key='jwt_secret'")[0][0])
    expired = jwt.encode({**claims, "iat": int(time.time()) - 100, "exp": int(time.time()) - 50}, secret, algorithm="HS256")
    assert_safe_error(await client.get(f"/{a}/auth/me", headers=bearer(expired)), 401)
    # a session id that was never issued, correctly signed
    ghost = jwt.encode({**claims, "jti": "never-issued"}, secret, algorithm="HS256")
    assert_safe_error(await client.get(f"/{a}/auth/me", headers=bearer(ghost)), 401)
    # garbage and a non-bearer scheme
    for hdr in ("Bearer garbage", "Bearer", "Basic YWRtaW46eA==", "Bearer " + "x" * 5000):
        assert_safe_error(await client.get(f"/{a}/auth/me", headers={"authorization": hdr}), 401)
    # positive control: the real token still works
    assert (await client.get(f"/{a}/auth/me", headers=bearer(token_a))).status_code == 200


async def test_stale_cookie_does_not_block_login(client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    token = await login(client, cenv)
    await client.post(f"/{cenv}/auth/logout", headers=bearer(token))
    r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "correct horse"},
                          headers={"cookie": f"wce_session={token}"})
    assert r.status_code == 200
    assert_safe_error(await client.get(f"/{cenv}/auth/me", headers={"cookie": f"wce_session={token}"}), 401)


async def test_password_change_revokes_other_sessions(client: httpx.AsyncClient, server: Server) -> None:
    cenv = await new_cenv(client)
    t1 = await login(client, cenv)
    t2 = await login(client, cenv)
    r = await client.post(f"/{cenv}/auth/password", headers=bearer(t1),
                          json={"old_password": "wrong one", "new_password": "brand new pass"})
    assert_safe_error(r, 401, "invalid_credentials")
    r = await client.post(f"/{cenv}/auth/password", headers=bearer(t1),
                          json={"old_password": "correct horse", "new_password": "short"})
    assert_safe_error(r, 400, "bad_request")
    r = await client.post(f"/{cenv}/auth/password", headers=bearer(t1),
                          json={"old_password": "correct horse", "new_password": "brand new pass"})
    assert r.status_code == 204
    assert (await client.get(f"/{cenv}/auth/me", headers=bearer(t1))).status_code == 200
    assert_safe_error(await client.get(f"/{cenv}/auth/me", headers=bearer(t2)), 401)
    await login(client, cenv, password="brand new pass")
    r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "correct horse"})
    assert r.status_code == 401
    assert "auth.password_change" in audit_actions(server, cenv)
    # the hash is argon2id with the parameters that fit the memory cap
    h = sql(server.data, cenv, "SELECT password_hash FROM _wce_users WHERE id = 1")[0][0]
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_register_closed_then_open(client: httpx.AsyncClient, server: Server) -> None:
    cenv = await new_cenv(client)
    assert_safe_error(await client.post(f"/{cenv}/auth/register", json={"username": "u1", "password": "password1"}),
                      403, "forbidden")
    # open registration by hand (the config API arrives with the data API), before the worker's first start
    cenv2 = await new_cenv(client)
    sql(server.data, cenv2, "INSERT INTO _wce_config(key, value) VALUES ('registration', '\"open\"')")
    r = await client.post(f"/{cenv2}/auth/register", json={"username": "u1", "password": "password1"})
    assert r.status_code == 201, r.text
    assert r.json()["user"]["role"] == "user"
    assert_safe_error(await client.post(f"/{cenv2}/auth/register", json={"username": "U1", "password": "password1"}),
                      409, "conflict")
    assert_safe_error(await client.post(f"/{cenv2}/auth/register", json={"username": "bad name!", "password": "password1"}),
                      400, "bad_request")
    tok = await login(client, cenv2, "u1", "password1")
    me = (await client.get(f"/{cenv2}/auth/me", headers=bearer(tok))).json()
    assert me["role"] == "user"
    assert "auth.register" in audit_actions(server, cenv2)


async def test_failed_logins_are_throttled(client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    statuses = []
    for _ in range(12):
        r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "nope nope"})
        statuses.append(r.status_code)
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "correct horse"})
    assert_safe_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) > 0
    # another username from the same address is not locked by this one's failures yet
    r = await client.post(f"/{cenv}/auth/login", json={"username": "someone", "password": "nope nope"})
    assert r.status_code == 401


async def test_the_login_throttle_outlives_the_worker(tmp_path: Path) -> None:
    """Finding L4: the counts were kept in the worker's memory, and a worker exits when idle (300 s
    by default, against a 15-minute window) or crashes: its successor started from zero."""
    srv = start_server(tmp_path, "--idle-timeout", "1")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenv = await new_cenv(client)
            statuses = []
            for _ in range(11):
                r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "nope nope"})
                statuses.append(r.status_code)
            assert statuses == [401] * 10 + [429]
            [pid] = srv.wait_workers(1)
            deadline = time.monotonic() + 60
            while alive(pid) and time.monotonic() < deadline:  # it exits once idle for a second
                await trio.sleep(0.1)
            assert not alive(pid)
            r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "correct horse"})
            assert_safe_error(r, 429, "rate_limited")
            assert int(r.headers["retry-after"]) > 0  # said by a new worker
            r = await client.post(f"/{cenv}/auth/login", json={"username": "someone", "password": "nope nope"})
            assert r.status_code == 401
    finally:
        srv.stop()


async def test_anonymous_on_every_auth_route(client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    assert_safe_error(await client.get(f"/{cenv}/auth/me"), 401)
    assert_safe_error(await client.post(f"/{cenv}/auth/logout"), 401)
    assert_safe_error(await client.post(f"/{cenv}/auth/password", json={"old_password": "a", "new_password": "b" * 9}), 401)
    assert_safe_error(await client.get(f"/{cenv}/auth/login"), 405, "method_not_allowed")
    assert_safe_error(await client.get(f"/{cenv}/no/such/route"), 404, "not_found")


async def test_concurrent_logins_do_not_block_each_other(client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    results: list[int] = []

    async def one() -> None:
        r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "correct horse"})
        results.append(r.status_code)

    async with trio.open_nursery() as n:
        for _ in range(8):
            n.start_soon(one)
    assert results == [200] * 8
