"""Pages against the real server: the admin edit mode, the display mode, and render on write
through the data API's writes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import trio

from support import Cenv, Server, add_user, admin_cenv, assert_safe_error, bearer, sql, start_server


async def notes_cenv(client: httpx.AsyncClient, anon_select: bool = True) -> Cenv:
    """A cenv with a table `notes(id, body)` that anon may (or may not) select."""
    c = await admin_cenv(client)
    h = bearer(c.admin)
    r = await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"})
    assert r.status_code == 201, r.text
    roles = {"user": {"select": True}}
    if anon_select:
        roles["anon"] = {"select": True}
    assert (await client.put(c.url("/api/permissions/notes"), headers=h, json={"roles": roles})).status_code == 200
    return c


async def add_page(client: httpx.AsyncClient, c: Cenv, **page: object) -> dict[str, object]:
    r = await client.post(c.url("/api/pages"), headers=bearer(c.admin), json=page)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def insert(client: httpx.AsyncClient, c: Cenv, rows: object) -> httpx.Response:
    return await client.post(c.url("/api/tables/notes/rows"), headers=bearer(c.admin), json=rows)


def sql_count(server: Server, c: Cenv, table: str) -> int:
    return int(sql(server.data, c.id, f"SELECT count(*) FROM {table}")[0][0])


LIST = {"path": "/notes", "template": "<ul>{{#notes}}<li>{{body}}</li>{{/notes}}</ul>",
        "queries": {"notes": "SELECT body FROM notes ORDER BY id"}}


async def test_routes_are_for_admins_only(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    other = await admin_cenv(client)
    user = await add_user(client, c, "reader")
    routes = [("GET", "/api/pages"), ("POST", "/api/pages"), ("GET", "/api/pages/1"), ("PUT", "/api/pages/1"),
              ("DELETE", "/api/pages/1"), ("GET", "/api/templates"), ("GET", "/api/templates/t"),
              ("PUT", "/api/templates/t"), ("DELETE", "/api/templates/t"), ("GET", "/api/values"),
              ("GET", "/api/values/k"), ("PUT", "/api/values/k"), ("DELETE", "/api/values/k")]
    for method, path in routes:
        body = {"path": "/x", "template": "x", "source": "x", "value": 1}
        assert_safe_error(await client.request(method, c.url(path), json=body), 401, "unauthenticated")
        assert_safe_error(await client.request(method, c.url(path), json=body, headers=bearer(user)), 403, "forbidden")
        assert_safe_error(await client.request(method, c.url(path), json=body, headers=bearer(other.admin)), 401)
    assert [sql_count(server, c, t) for t in ("_wce_pages", "_wce_templates", "_wce_values")] == [0, 0, 0]


async def test_edit_mode_crud_and_audit(client: httpx.AsyncClient, server: Server) -> None:
    c = await notes_cenv(client)
    h = bearer(c.admin)
    page = await add_page(client, c, **LIST)
    assert page["path"] == "/notes" and page["access"] == "public" and page["content_type"] == "text/html"
    assert page["context"] is None and page["render_error"] is None and page["etag"] and page["rendered_at"]
    pid = page["id"]
    got = (await client.get(c.url(f"/api/pages/{pid}"), headers=h)).json()
    assert got == page
    r = await client.put(c.url(f"/api/pages/{pid}"), headers=h, json={**LIST, "path": "/list", "content_type": "text/plain"})
    assert r.status_code == 200 and r.json()["path"] == "/list"
    assert [p["path"] for p in (await client.get(c.url("/api/pages"), headers=h)).json()["pages"]] == ["/list"]
    assert_safe_error(await client.get(c.url("/notes")), 404)
    assert (await client.get(c.url("/list"))).headers["content-type"] == "text/plain; charset=utf-8"
    assert (await client.delete(c.url(f"/api/pages/{pid}"), headers=h)).status_code == 204
    assert_safe_error(await client.get(c.url("/list")), 404)
    assert_safe_error(await client.get(c.url(f"/api/pages/{pid}"), headers=h), 404)
    assert_safe_error(await client.get(c.url("/api/pages/abc"), headers=h), 404)
    # templates and values
    r = await client.put(c.url("/api/templates/nav"), headers=h, json={"source": "<nav>{{values.site}}</nav>"})
    assert r.status_code == 201 and r.json()["name"] == "nav"
    assert (await client.put(c.url("/api/templates/nav"), headers=h, json={"source": "v2"})).status_code == 200
    assert (await client.get(c.url("/api/templates"), headers=h)).json()["templates"][0]["source"] == "v2"
    r = await client.put(c.url("/api/values/site"), headers=h, json={"value": {"name": "Mine"}})
    assert r.status_code == 201 and r.json()["value"] == {"name": "Mine"}
    assert (await client.get(c.url("/api/values/site"), headers=h)).json()["value"] == {"name": "Mine"}
    assert [v["key"] for v in (await client.get(c.url("/api/values"), headers=h)).json()["values"]] == ["site"]
    assert (await client.delete(c.url("/api/values/site"), headers=h)).status_code == 204
    assert (await client.delete(c.url("/api/templates/nav"), headers=h)).status_code == 204
    assert_safe_error(await client.delete(c.url("/api/templates/nav"), headers=h), 404)
    actions = [r[0] for r in sql(server.data, c.id, "SELECT action FROM _wce_audit_log WHERE action LIKE 'page.%'"
                                 " OR action LIKE 'template.%' OR action LIKE 'value.%' ORDER BY id")]
    assert actions == ["page.create", "page.update", "page.delete", "template.put", "template.put", "value.put",
                       "value.delete", "template.delete"]


async def test_saving_refuses_what_cannot_render(client: httpx.AsyncClient, server: Server) -> None:
    c = await notes_cenv(client, anon_select=False)
    h = bearer(c.admin)

    async def refused(status: int, **page: object) -> str:
        r = await client.post(c.url("/api/pages"), headers=h, json={"path": "/x", "template": "", **page})
        return str(assert_safe_error(r, status)["error"]["message"])

    assert "line 2, column 5" in await refused(422, context="def context(ctx:\n    return {}")
    assert "context" in await refused(422, context="def other(ctx):\n    return {}")
    assert "notes" in await refused(422, queries={"n": "SELECT * FROM notes"})  # anon may not select it
    assert "_wce_users" in await refused(422, queries={"u": "SELECT * FROM _wce_users"}, access="admin")
    assert "line 1" in await refused(422, template="{{#open}}")
    await refused(422, path="/api/tables")
    await refused(422, queries={"w": "DELETE FROM notes"}, access="admin")
    await refused(400, template=None)
    # the same query is fine for a page that renders with the user role's grants
    await add_page(client, c, path="/x", template="", queries={"n": "SELECT * FROM notes"}, access="user")
    await refused(409)  # the path is taken
    assert sql_count(server, c, "_wce_pages") == 1


async def test_a_write_updates_the_served_page(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    await add_page(client, c, **LIST)
    r = await client.get(c.url("/notes"))
    assert r.status_code == 200 and r.text == "<ul></ul>"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert (await insert(client, c, {"body": "<hello>"})).status_code == 201
    assert (await client.get(c.url("/notes"))).text == "<ul><li>&lt;hello&gt;</li></ul>"  # at once, escaped


async def test_a_rolled_back_write_changes_nothing(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    await insert(client, c, {"body": "kept"})
    await add_page(client, c, **LIST)
    before = await client.get(c.url("/notes"))
    r = await insert(client, c, [{"body": "would be"}, {"body": None}])  # NOT NULL: the whole bulk is refused
    assert r.status_code >= 400
    after = await client.get(c.url("/notes"))
    assert after.text == before.text == "<ul><li>kept</li></ul>"
    assert after.headers["etag"] == before.headers["etag"]


async def test_access_levels(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    other = await admin_cenv(client)
    user = await add_user(client, c, "member")
    await add_page(client, c, path="/members", template="hi members", access="user")
    await add_page(client, c, path="/admins", template="hi admins", access="admin")
    assert_safe_error(await client.get(c.url("/members")), 401, "unauthenticated")
    assert_safe_error(await client.get(c.url("/members"), headers=bearer(other.admin)), 401)
    assert (await client.get(c.url("/members"), headers=bearer(user))).text == "hi members"
    assert (await client.get(c.url("/members"), headers=bearer(c.admin))).status_code == 200
    assert_safe_error(await client.get(c.url("/admins")), 401)
    assert_safe_error(await client.get(c.url("/admins"), headers=bearer(user)), 403, "forbidden")
    r = await client.get(c.url("/admins"), headers=bearer(c.admin))
    assert r.text == "hi admins" and r.headers["cache-control"] == "private, no-store"


async def test_public_pages_render_with_anon_grants(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    h = bearer(c.admin)
    await insert(client, c, {"body": "visible"})
    page = await add_page(client, c, **LIST)
    assert (await client.get(c.url("/notes"))).text == "<ul><li>visible</li></ul>"
    # the admin withdraws anon's grant: the page may not show the table any more
    r = await client.put(c.url("/api/permissions/notes"), headers=h, json={"roles": {"user": {"select": True}}})
    assert r.status_code == 200
    assert_safe_error(await client.get(c.url("/notes")), 500, "script_error")
    status = (await client.get(c.url(f"/api/pages/{page['id']}"), headers=h)).json()
    assert "notes" in status["render_error"] and status["etag"] is None


async def test_etag_and_cache_control(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    await add_page(client, c, **LIST)
    r = await client.get(c.url("/notes"))
    etag = r.headers["etag"]
    assert r.headers["cache-control"] == "public, no-cache" and r.headers["x-content-type-options"] == "nosniff"
    r304 = await client.get(c.url("/notes"), headers={"if-none-match": etag})
    assert r304.status_code == 304 and r304.content == b"" and r304.headers["etag"] == etag
    assert (await client.get(c.url("/notes"), headers={"if-none-match": f'"nope", W/{etag}'})).status_code == 304
    assert (await client.head(c.url("/notes"))).status_code == 200
    await insert(client, c, {"body": "new"})
    r2 = await client.get(c.url("/notes"), headers={"if-none-match": etag})
    assert r2.status_code == 200 and r2.headers["etag"] != etag


async def test_template_change_rerenders_dependents(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    h = bearer(c.admin)
    await client.put(c.url("/api/templates/layout"), headers=h, json={"source": "<main>{{$body}}default{{/body}}</main>"})
    await add_page(client, c, path="/a", template="{{<layout}}{{$body}}A {{values.who}}{{/body}}{{/layout}}")
    await add_page(client, c, path="/b", template="B")
    assert (await client.get(c.url("/a"))).text == "<main>A </main>"
    await client.put(c.url("/api/templates/layout"), headers=h, json={"source": "<article>{{$body}}{{/body}}</article>"})
    await client.put(c.url("/api/values/who"), headers=h, json={"value": "me"})
    assert (await client.get(c.url("/a"))).text == "<article>A me</article>"
    assert (await client.get(c.url("/b"))).text == "B"


async def test_a_failing_render_keeps_the_last_good_output(client: httpx.AsyncClient) -> None:
    c = await notes_cenv(client)
    h = bearer(c.admin)
    page = await add_page(client, c, path="/json", template="{{#rows}}{{j}}{{/rows}}",
                          queries={"rows": "SELECT json(body) AS j FROM notes"})
    await insert(client, c, {"body": "[1,2]"})
    assert (await client.get(c.url("/json"))).text == "[1,2]"
    await insert(client, c, {"body": "not json"})
    assert (await client.get(c.url("/json"))).text == "[1,2]"
    status = (await client.get(c.url(f"/api/pages/{page['id']}"), headers=h)).json()
    assert "malformed JSON" in status["render_error"]
    assert (await client.delete(c.url("/api/tables/notes/rows/2"), headers=h)).status_code == 204
    status = (await client.get(c.url(f"/api/pages/{page['id']}"), headers=h)).json()
    assert status["render_error"] is None


async def test_a_page_at_the_root_replaces_the_front_page(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    assert "This cenv is running" in (await client.get(c.url("/"))).text
    assert_safe_error(await client.get(c.url("/nothing/here")), 404)
    await add_page(client, c, path="/", template="my home")
    assert (await client.get(c.url("/"))).text == "my home"


async def test_pages_are_served_by_a_new_worker_without_rendering(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--idle-timeout", "0.3")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            c = await notes_cenv(client)
            await insert(client, c, {"body": "one"})
            await add_page(client, c, **LIST)
            etag = (await client.get(c.url("/notes"))).headers["etag"]
            assert srv.wait_workers(0, timeout=15) == []  # idle exit: a clean stop
            assert sql(srv.data, c.id, "SELECT value FROM _wce_meta WHERE key = 'render_cache_clean'") == [("1",)]
            r = await client.get(c.url("/notes"))
            assert r.headers["etag"] == etag and r.text == "<ul><li>one</li></ul>"
            assert r.headers["x-wce-cache"] == "hit"  # served as stored: no render
            # a crash loses the marker; the next worker renders again and sees writes made meanwhile
            [pid] = srv.wait_workers(1)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while srv.workers() and time.monotonic() < deadline:
                await trio.sleep(0.02)
            sql(srv.data, c.id, "INSERT INTO notes(body) VALUES ('written offline')")
            r = await client.get(c.url("/notes"))
            assert r.text == "<ul><li>one</li><li>written offline</li></ul>"
            assert r.headers["x-wce-cache"] == "miss"  # stale after the crash: rendered by this request
            r = await client.get(c.url("/notes"))
            assert r.text == "<ul><li>one</li><li>written offline</li></ul>" and r.headers["x-wce-cache"] == "hit"
    finally:
        srv.stop()
