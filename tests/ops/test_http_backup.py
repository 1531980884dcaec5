"""`GET /{cenv}/api/export` and `POST /import` over real HTTP, against a real server."""

from __future__ import annotations

from pathlib import Path

import apsw
import httpx
import trio

from support import Server, add_user, admin_cenv, assert_safe_error, bearer, login, new_cenv, sql, start_server

PASSWORD = "correct horse"


def upload(content: bytes, username: str | None = "admin", password: str | None = PASSWORD) -> dict[str, object]:
    data = {k: v for k, v in (("username", username), ("password", password)) if v is not None}
    return {"files": {"file": ("cenv.sqlite", content, "application/vnd.sqlite3")}, "data": data}


async def post_import(client: httpx.AsyncClient, headers: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
    """POST /import with a blocking client in a thread: the server may answer (413, 403, 429) before
    it has read the upload, and a blocking upload can be abandoned cleanly."""
    url = f"{client.base_url}".rstrip("/") + "/import"

    def post() -> httpx.Response:
        with httpx.Client(timeout=30) as c:
            return c.post(url, headers=headers, **kwargs)  # type: ignore[arg-type]

    return await trio.to_thread.run_sync(post)


async def exported(client: httpx.AsyncClient, cenv: str, token: str) -> bytes:
    r = await client.get(f"/{cenv}/api/export", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.content


# export

async def test_export_is_for_admins_only(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    other = await admin_cenv(client)
    user = await add_user(client, c, "reader")
    assert_safe_error(await client.get(c.url("/api/export")), 401, "unauthenticated")
    assert_safe_error(await client.get(c.url("/api/export"), headers=bearer(user)), 403, "forbidden")
    assert_safe_error(await client.get(c.url("/api/export"), headers=bearer(other.admin)), 401, "unauthenticated")
    assert_safe_error(await client.post(c.url("/api/export"), headers=bearer(c.admin)), 405)


async def test_export_answers_a_consistent_sqlite_file(client: httpx.AsyncClient, server: Server, tmp_path: Path) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"})
    rows = [{"body": f"note {i}"} for i in range(100)]
    assert (await client.post(c.url("/api/tables/notes/rows"), headers=h, json=rows)).status_code == 201
    r = await client.get(c.url("/api/export"), headers=h)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.sqlite3"
    assert r.headers["content-disposition"] == f'attachment; filename="{c.id}.sqlite"'
    assert int(r.headers["content-length"]) == len(r.content)
    out = tmp_path / "copy.sqlite"
    out.write_bytes(r.content)
    from wce.core import backup

    assert backup.check_file(out).ok
    conn = apsw.Connection(str(out))
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (100,)
    conn.close()
    # the export is audited in the cenv, and leaves no temporary file in the data folder
    assert sql(server.data, c.id, "SELECT action FROM _wce_audit_log ORDER BY id DESC LIMIT 1") == [("cenv.export",)]
    assert not [p for p in server.data.iterdir() if p.name.endswith(".exporting")]


# import

async def test_import_round_trip_over_http(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"})
    await client.post(c.url("/api/tables/notes/rows"), headers=h, json={"body": "kept"})
    user = await add_user(client, c, "reader")
    content = await exported(client, c.id, c.admin)
    r = await post_import(client, **upload(content))  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    new = r.json()["cenv"]
    assert new != c.id and r.json()["url"].endswith(f"/{new}/") and r.headers["location"] == r.json()["url"]
    # the data came along, the same credentials work at the new id
    token = await login(client, new)
    rows = (await client.get(f"/{new}/api/tables/notes/rows", headers=bearer(token))).json()["rows"]
    assert [x["body"] for x in rows] == ["kept"]
    # tokens issued for the original never work at the copy (new secret, sessions cleared) ...
    assert_safe_error(await client.get(f"/{new}/auth/me", headers=bearer(c.admin)), 401)
    assert_safe_error(await client.get(f"/{new}/auth/me", headers=bearer(user)), 401)
    assert sql(server.data, new, "SELECT count(*) FROM _wce_sessions") == [(1,)]  # only the new login
    # ... and the original keeps working as before
    assert (await client.get(c.url("/auth/me"), headers=h)).status_code == 200
    assert sql(server.data, new, "SELECT action, actor FROM _wce_audit_log WHERE action = 'cenv.import'") == \
        [("cenv.import", "admin")]


async def test_import_needs_the_credentials_of_an_admin_of_the_file(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    other = await admin_cenv(client)
    await add_user(client, c, "reader", password="reader password")
    content = await exported(client, c.id, c.admin)
    # anonymous: no credentials at all
    assert_safe_error(await post_import(client, **upload(content, None, None)), 400, "bad_request")  # type: ignore[arg-type]
    # a user of that cenv without the admin role
    assert_safe_error(await post_import(client, **upload(content, "reader", "reader password")), 403, "forbidden")  # type: ignore[arg-type]
    # a valid token of another cenv is no credential here, nor are that cenv's admin's
    r = await post_import(client, headers=bearer(other.admin), **upload(content, None, None))  # type: ignore[arg-type]
    assert_safe_error(r, 400)
    r = await post_import(client, headers=bearer(other.admin), **upload(content, "admin", "wrong password"))  # type: ignore[arg-type]
    assert_safe_error(r, 403, "forbidden")
    assert_safe_error(await post_import(client, **upload(content, "nobody", PASSWORD)), 403)  # type: ignore[arg-type]


async def test_import_refuses_bad_files_with_422(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    content = await exported(client, c.id, c.admin)
    before = sorted(p.name for p in server.data.iterdir() if p.name.endswith(".sqlite"))
    mangled = bytearray(content)
    for p in range(1, len(content) // 4096):
        mangled[p * 4096: p * 4096 + 16] = b"\xff" * 16
    cases = {
        "truncated": content[: len(content) // 3],
        "corrupted": bytes(mangled),
        "text": b"not a database at all\n" * 50,
        "empty": b"",
    }
    for name, data in cases.items():
        body = assert_safe_error(await post_import(client, **upload(data)), 422, "invalid")  # type: ignore[arg-type]
        assert body["error"]["message"], name
    foreign = server.data.parent / "foreign.sqlite"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    body = assert_safe_error(await post_import(client, **upload(foreign.read_bytes())), 422)  # type: ignore[arg-type]
    assert "not a WCE cenv" in body["error"]["message"]
    after = sorted(p.name for p in server.data.iterdir() if p.name.endswith(".sqlite"))
    assert after == before
    assert not [p for p in server.data.iterdir() if p.name.endswith(".importing")]


async def test_import_request_shape(client: httpx.AsyncClient) -> None:
    assert_safe_error(await client.get("/import"), 405, "method_not_allowed")
    assert_safe_error(await post_import(client, json={"username": "a", "password": "b"}), 400)
    assert_safe_error(await post_import(client, content=b"--x\r\nnonsense", headers={
        "content-type": "multipart/form-data; boundary=x"}), 400)
    # a body larger than the ordinary 1 MiB limit is fine here (it is refused for what it is)
    r = await post_import(client, **upload(b"\0" * (2 << 20)))  # type: ignore[arg-type]
    assert_safe_error(r, 422)


async def test_import_has_its_own_size_limit_and_rate_limit(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-import-mb", "1", "--new-per-hour", "3")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            cenv = await new_cenv(client)  # one of the 3
            token = await login(client, cenv)
            content = await exported(client, cenv, token)
            r = await post_import(client, **upload(b"\0" * (2 << 20)))  # type: ignore[arg-type]
            assert_safe_error(r, 413, "too_large")
            assert r.headers.get("connection") == "close"
            for _ in range(3):  # imports have their own per-address budget, the same size as /new's
                assert (await post_import(client, **upload(content))).status_code == 201  # type: ignore[arg-type]
            r = await post_import(client, **upload(content))  # type: ignore[arg-type]
            assert_safe_error(r, 429, "rate_limited")
            assert int(r.headers["retry-after"]) > 0
    finally:
        srv.stop()


async def test_import_is_off_with_public_new_off(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--no-public-new")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            assert_safe_error(await post_import(client, **upload(b"x")), 403, "forbidden")  # type: ignore[arg-type]
    finally:
        srv.stop()
