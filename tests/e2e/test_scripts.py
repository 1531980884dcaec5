"""Starlark endpoints: routing, ctx, db with the caller's permissions, budgets, and the sandbox."""

from __future__ import annotations

import statistics
import time

import httpx
import pytest
import trio

from support import Cenv, Server, add_user, admin_cenv, assert_safe_error, audit_count, bearer, sql


async def endpoint(client: httpx.AsyncClient, c: Cenv, path: str, source: str, method: str = "GET",
                   access: str = "public") -> int:
    r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin),
                          json={"method": method, "path": path, "source": source, "access": access})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


HELLO = '''
def handle_request(ctx):
    print("hello", ctx.params["name"])
    return {"hello": ctx.params["name"], "method": ctx.method, "q": ctx.query, "user": ctx.user,
            "json": ctx.json}
'''


async def test_endpoint_routing_ctx_and_print(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    await endpoint(client, c, "/hello/{name}", HELLO)
    await endpoint(client, c, "/hello/world", 'def handle_request(ctx):\n    return {"exact": True}\n')
    await endpoint(client, c, "/hello/{name}", HELLO, method="POST")
    r = await client.get(c.url("/fn/hello/bob?x=1"))
    assert r.status_code == 200, r.text
    assert r.json() == {"hello": "bob", "method": "GET", "q": {"x": "1"}, "user": None, "json": None}
    assert (await client.get(c.url("/fn/hello/world"))).json() == {"exact": True}  # exact before pattern
    r = await client.post(c.url("/fn/hello/ann"), json={"k": [1, 2]}, headers=bearer(c.admin))
    assert r.json()["json"] == {"k": [1, 2]} and r.json()["user"]["username"] == "admin"
    assert_safe_error(await client.delete(c.url("/fn/hello/bob")), 405)
    assert_safe_error(await client.get(c.url("/fn/nothing/here")), 404)
    # a clash with an existing endpoint is refused when saving
    r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin),
                          json={"method": "GET", "path": "/hello/{other}", "source": HELLO, "access": "public"})
    assert_safe_error(r, 409, "conflict")
    logs = (await client.get(c.url("/api/logs"), headers=bearer(c.admin))).json()["lines"]
    assert [entry["line"] for entry in logs][:2] == ["hello ann", "hello bob"]


async def test_save_checks_source_with_line_and_column(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    cases = [
        ("def handle_request(ctx):\n    return {\"a\": 1\n", 2, None),
        ("def handle_request(ctx):\n    return 1\nx = = 2\n", 3, 5),
        ("x = 1\n", None, None),
        ("def handle_request(ctx):\n    return undefined_thing\n", 2, 12),
        ('load("/etc/passwd", "x")\ndef handle_request(ctx):\n    return {}\n', 1, 1),
    ]
    for source, line, col in cases:
        r = await client.post(c.url("/api/endpoints"), headers=h, json={"method": "GET", "path": "/x", "source": source})
        body = assert_safe_error(r, 422, "invalid")
        if line:
            assert f"line {line}" in body["error"]["message"], body
        if col:
            assert f"column {col}" in body["error"]["message"], body
    for bad in ({"method": "BREW", "path": "/x", "source": HELLO}, {"method": "GET", "path": "x", "source": HELLO},
                {"method": "GET", "path": "/a/{b}/{b}", "source": HELLO}, {"method": "GET", "path": "/x", "source": 1},
                {"method": "GET", "path": "/x", "source": HELLO, "access": "everyone"}):
        assert_safe_error(await client.post(c.url("/api/endpoints"), headers=h, json=bad), 400)


async def test_access_levels(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    other = await admin_cenv(client)
    user = await add_user(client, c, "uma")
    src = 'def handle_request(ctx):\n    return {"ok": True}\n'
    await endpoint(client, c, "/pub", src, access="public")
    await endpoint(client, c, "/usr", src, access="user")
    await endpoint(client, c, "/adm", src, access="admin")
    expect = {"/pub": (200, 200, 200, 401), "/usr": (401, 200, 200, 401), "/adm": (401, 403, 200, 401)}
    for path, (anon, u, a, foreign) in expect.items():
        assert (await client.get(c.url("/fn" + path))).status_code == anon
        assert (await client.get(c.url("/fn" + path), headers=bearer(user))).status_code == u
        assert (await client.get(c.url("/fn" + path), headers=bearer(c.admin))).status_code == a
        assert (await client.get(c.url("/fn" + path), headers=bearer(other.admin))).status_code == foreign
    # endpoint management is admin-only
    for token, status in ((None, 401), (user, 403), (other.admin, 401)):
        r = await client.get(c.url("/api/endpoints"), headers=bearer(token) if token else {})
        assert_safe_error(r, status)
        r = await client.post(c.url("/api/endpoints/1/test"), headers=bearer(token) if token else {}, json={})
        assert_safe_error(r, status)


async def test_db_acts_with_the_callers_permissions(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE docs (id INTEGER PRIMARY KEY, owner INTEGER, body TEXT)"})
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE secret (id INTEGER PRIMARY KEY, v TEXT)"})
    alice = await add_user(client, c, "alice")
    aid = (await client.get(c.url("/auth/me"), headers=bearer(alice))).json()["id"]
    await client.put(c.url("/api/permissions/docs"), headers=h, json={"roles": {"user": {"select": True, "insert": True}}})
    await client.put(c.url("/api/policies/docs"), headers=h, json=[
        {"role": "user", "action": "select", "using": "owner = :user_id"},
        {"role": "user", "action": "insert", "check": "owner = :user_id"}])
    await client.post(c.url("/api/tables/docs/rows"), headers=h, json=[{"id": 1, "owner": aid, "body": "mine"}, {"id": 2, "owner": 999, "body": "not mine"}])
    await client.post(c.url("/api/tables/secret/rows"), headers=h, json={"v": "classified"})
    src = '''
def handle_request(ctx):
    what = ctx.query["what"]
    if what == "get1":
        return {"row": ctx.db.get("docs", 1)}
    if what == "get2":
        return {"row": ctx.db.get("docs", 2)}
    if what == "secret":
        return {"rows": ctx.db.query("SELECT * FROM secret")}
    if what == "users":
        return {"rows": ctx.db.query("SELECT * FROM _wce_users")}
    if what == "rawdocs":
        return {"rows": ctx.db.query("SELECT * FROM docs")}
    if what == "write":
        return {"rows": ctx.db.query("DELETE FROM docs")}
    if what == "insert_other":
        return {"row": ctx.db.insert("docs", {"owner": 999, "body": "forged"})}
    if what == "insert_mine":
        return {"row": ctx.db.insert("docs", {"owner": ctx.user["id"], "body": "new"})}
    if what == "two_then_fail":
        ctx.db.insert("docs", {"owner": ctx.user["id"], "body": "first"})
        ctx.db.insert("docs", {"owner": 999, "body": "second"})
    return {}
'''
    await endpoint(client, c, "/db", src, access="user")

    async def call(what: str, token: str = alice) -> httpx.Response:
        return await client.get(c.url("/fn/db"), params={"what": what}, headers=bearer(token))

    assert (await call("get1")).json() == {"row": {"id": 1, "owner": aid, "body": "mine"}}
    assert (await call("get2")).json() == {"row": None}  # hidden by policy, as through REST
    assert_safe_error(await call("secret"), 403)  # no grant on the table
    assert_safe_error(await call("users"), 403)  # _wce_ tables never
    assert_safe_error(await call("rawdocs"), 403)  # raw SQL cannot honour row policies
    assert_safe_error(await call("write"), 403)  # raw SQL is read-only for non-admins
    assert_safe_error(await call("insert_other"), 403)
    assert (await call("insert_mine")).status_code == 200
    n = sql(server.data, c.id, "SELECT count(*) FROM docs")[0][0]
    a = audit_count(server.data, c.id)
    assert_safe_error(await call("two_then_fail"), 403)
    assert sql(server.data, c.id, "SELECT count(*) FROM docs")[0][0] == n  # all or nothing
    assert audit_count(server.data, c.id) == a
    # the admin's raw query may read everything but _wce_ tables
    assert (await call("secret", c.admin)).json() == {"rows": [{"id": 1, "v": "classified"}]}
    assert_safe_error(await call("users", c.admin), 403)


@pytest.mark.parametrize("source,status", [
    ("def handle_request(ctx):\n    t = 0\n    for i in range(1000000000):\n        t = (t + i) % 7\n    return {}\n", 504),
    ("def f(n):\n    return f(n + 1)\ndef handle_request(ctx):\n    return f(0)\n", 500),
    ("def a(n):\n    return b(n)\ndef b(n):\n    return a(n)\ndef handle_request(ctx):\n    return a(0)\n", 500),
    ("def handle_request(ctx):\n    x = []\n    for i in range(100000000):\n        x.append(str(i) * 100)\n    return {}\n", (503, 504)),
    ("def handle_request(ctx):\n    return {'x': [0] * 2000000000}\n", (500, 503)),
    ("def handle_request(ctx):\n    return {'x': 'a' * int(ctx.query.get('n', '2000000000'))}\n", (500, 503)),
    ("def handle_request(ctx):\n    n = int(ctx.query.get('n', '20000000'))\n    return {'x': len(str(list(range(n))))}\n", (503, 504)),
    ("def handle_request(ctx):\n    return {1: 'int key', 'big': 123456789012345678901234567890}\n", 200),
    ("def handle_request(ctx):\n    return 'a string'\n", 500),
    ("def handle_request(ctx):\n    return {'f': float('nan')}\n", 200),  # starlark-pyo3 hands NaN over as null
    ("def handle_request(ctx):\n    fail('custom failure')\n", 500),
])
async def test_abuse_is_refused_and_the_cenv_keeps_serving(client: httpx.AsyncClient, source: str,
                                                           status: int | tuple[int, ...]) -> None:
    c = await admin_cenv(client)
    await endpoint(client, c, "/abuse", source)
    await endpoint(client, c, "/ok", 'def handle_request(ctx):\n    return {"ok": True}\n')
    r = await client.get(c.url("/fn/abuse"))
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), r.text
    if r.status_code >= 400:
        body = assert_safe_error(r, r.status_code)
        assert body["error"]["code"] in ("timeout", "unavailable", "script_error")
        if body["error"]["code"] == "script_error":
            assert body["error"]["message"] == "the script failed"  # details only for admins
    for _ in range(20):  # a worker that died is replaced; the cenv answers again
        ok = await client.get(c.url("/fn/ok"))
        if ok.status_code == 200:
            break
        await trio.sleep(0.1)
    assert ok.json() == {"ok": True}


@pytest.mark.parametrize("source", [
    "def handle_request(ctx):\n    return {'x': 'a' * 2000000000}\n",
    "def handle_request(ctx):\n    return {'x': len(str(list(range(20000000))))}\n",
    "BIG = [0] * 2000000000\ndef handle_request(ctx):\n    return {}\n",
])
async def test_scripts_that_explode_while_compiling_are_refused_at_save(client: httpx.AsyncClient, source: str) -> None:
    """starlark-rust folds constant expressions when compiling: the check runs in a child process."""
    c = await admin_cenv(client)
    r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin),
                          json={"method": "GET", "path": "/x", "source": source, "access": "public"})
    assert_safe_error(r, 422, "invalid")
    assert (await client.get(c.url("/auth/me"), headers=bearer(c.admin))).status_code == 200


async def test_script_errors_show_details_to_admins_only(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    await endpoint(client, c, "/boom", "def handle_request(ctx):\n    x = {}\n    return x['missing']\n")
    anon = assert_safe_error(await client.get(c.url("/fn/boom")), 500, "script_error")
    assert anon["error"]["message"] == "the script failed"
    admin = assert_safe_error(await client.get(c.url("/fn/boom"), headers=bearer(c.admin)), 500, "script_error")
    assert "missing" in admin["error"]["message"] and "line 3" in admin["error"]["message"]


async def test_response_builtin_and_test_panel(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"})
    src = '''
def handle_request(ctx):
    print("inserting")
    ctx.db.insert("t", {"v": "x"})
    return response(status=418, body="<b>teapot</b>", headers={"x-kind": "tea"}, content_type="text/html")
'''
    sid = await endpoint(client, c, "/tea", src, method="POST")
    assert_safe_error(await client.post(c.url("/fn/tea")), 401)  # anon may not insert into t: nor may its script
    r = await client.post(c.url("/fn/tea"), headers=h)
    assert r.status_code == 418 and r.text == "<b>teapot</b>" and r.headers["x-kind"] == "tea"
    assert r.headers["content-type"] == "text/html"
    assert sql(server.data, c.id, "SELECT count(*) FROM t")[0][0] == 1
    t = await client.post(c.url(f"/api/endpoints/{sid}/test"), headers=h, json={"json": {"a": 1}})
    body = t.json()
    assert body["response"]["status"] == 418 and body["printed"] == ["inserting"] and body["rolled_back"] is True
    assert body["duration_ms"] >= 0
    assert sql(server.data, c.id, "SELECT count(*) FROM t")[0][0] == 1  # the test run wrote nothing
    bad = await client.put(c.url(f"/api/endpoints/{sid}"), headers=h, json={"method": "POST", "path": "/tea",
                           "source": "def handle_request(ctx):\n    return response(headers={'set-cookie': 'x=1'})\n"})
    assert bad.status_code == 200
    assert_safe_error(await client.post(c.url("/fn/tea"), headers=h), 500, "script_error")


async def test_other_cenvs_do_not_notice_abuse(client: httpx.AsyncClient) -> None:
    victim = await admin_cenv(client)
    abuser = await admin_cenv(client)
    await endpoint(client, victim, "/ok", 'def handle_request(ctx):\n    return {"ok": True}\n')
    await endpoint(client, abuser, "/spin",
                   "def handle_request(ctx):\n    t = 0\n    for i in range(1000000000):\n        t = (t + i) % 7\n    return {}\n")

    async def latencies(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            assert (await client.get(victim.url("/fn/ok"))).status_code == 200
            out.append(time.perf_counter() - t0)
        return out

    await latencies(5)
    quiet = statistics.median(await latencies(30))
    async with trio.open_nursery() as n:
        for _ in range(2):
            n.start_soon(client.get, abuser.url("/fn/spin"))
        await trio.sleep(0.2)
        busy = statistics.median(await latencies(30))
    # generous: a busy 2-core machine; what must not happen is waiting for the abuser's budget (2 s)
    assert busy < max(quiet * 20, 0.25), (quiet, busy)


async def test_triggers_run_after_commit_in_order_and_are_bounded(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    for ddl in ("CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER)",
                "CREATE TABLE log (id INTEGER PRIMARY KEY, what TEXT)",
                "CREATE TABLE loop (id INTEGER PRIMARY KEY, n INTEGER)"):
        assert (await client.post(c.url("/api/tables"), headers=h, json={"sql": ddl})).status_code == 201
    logger = '''
def on_change(event):
    for ch in event.changes:
        print("saw", ch["table"], ch["op"], ch["rowid"])
        event.db.insert("log", {"what": ch["op"] + ":" + str(ch["rowid"])})
'''
    r = await client.post(c.url("/api/triggers"), headers=h, json={"name": "logger", "tables": ["orders"], "source": logger})
    assert r.status_code == 201, r.text
    await client.post(c.url("/api/tables/orders/rows"), headers=h, json=[{"qty": 1}, {"qty": 2}])
    await client.patch(c.url("/api/tables/orders/rows/1"), headers=h, json={"qty": 5})
    await client.delete(c.url("/api/tables/orders/rows/2"), headers=h)
    whats = [r[0] for r in sql(server.data, c.id, "SELECT what FROM log ORDER BY id")]
    assert whats == ["insert:1", "insert:2", "update:1", "delete:2"]
    # a trigger that triggers itself stops at the depth limit, and says so
    loop = 'def on_change(event):\n    event.db.insert("loop", {"n": 1})\n'
    await client.post(c.url("/api/triggers"), headers=h, json={"name": "looper", "tables": ["loop"], "source": loop})
    r = await client.post(c.url("/api/tables/loop/rows"), headers=h, json={"n": 0})
    assert r.status_code == 201
    assert sql(server.data, c.id, "SELECT count(*) FROM loop")[0][0] == 9  # the write + 8 trigger generations
    assert sql(server.data, c.id, "SELECT count(*) FROM _wce_audit_log WHERE action = 'trigger.depth_limit'")[0][0] == 1
    # a failing trigger is audited and does not undo the commit that fired it
    bad = 'def on_change(event):\n    event.db.insert("log", {"what": "partial"})\n    fail("trigger broke")\n'
    await client.post(c.url("/api/triggers"), headers=h, json={"name": "broken", "tables": ["orders"], "source": bad})
    r = await client.post(c.url("/api/tables/orders/rows"), headers=h, json={"qty": 7})
    assert r.status_code == 201
    assert sql(server.data, c.id, "SELECT qty FROM orders WHERE id = ?", r.json()["id"])[0][0] == 7
    assert sql(server.data, c.id, "SELECT count(*) FROM log WHERE what = 'partial'")[0][0] == 0
    err = sql(server.data, c.id, "SELECT detail FROM _wce_audit_log WHERE action = 'trigger.error'")
    assert len(err) == 1 and "trigger broke" in err[0][0]
    # trigger CRUD is admin-only and validated
    user = await add_user(client, c, "tina")
    assert_safe_error(await client.get(c.url("/api/triggers"), headers=bearer(user)), 403)
    assert_safe_error(await client.get(c.url("/api/triggers")), 401)
    assert_safe_error(await client.post(c.url("/api/triggers"), headers=h, json={"name": "x", "tables": ["_wce_users"], "source": loop}), 400)
    assert_safe_error(await client.post(c.url("/api/triggers"), headers=h, json={"name": "x", "tables": ["t"], "source": "def nope(e):\n    pass\n"}), 422)
    names = [t["name"] for t in (await client.get(c.url("/api/triggers"), headers=h)).json()["triggers"]]
    assert names == ["logger", "looper", "broken"]


async def test_page_context_runs_with_the_page_role_and_rerenders_on_write(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE stats (id INTEGER PRIMARY KEY, n INTEGER)"})
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE private (id INTEGER PRIMARY KEY, v TEXT)"})
    await client.put(c.url("/api/permissions/stats"), headers=h, json={"roles": {"anon": {"select": True}}})
    await client.post(c.url("/api/tables/stats/rows"), headers=h, json={"id": 1, "n": 41})
    ctx = 'def context(ctx):\n    row = ctx.db.get("stats", 1)\n    return {"answer": row["n"] + 1}\n'
    r = await client.post(c.url("/api/pages"), headers=h, json={"path": "/answer", "template": "<p>{{answer}}</p>",
                          "context": ctx, "access": "public"})
    assert r.status_code == 201, r.text
    assert r.json()["render_error"] is None
    assert (await client.get(c.url("/answer"))).text == "<p>42</p>"
    # a write to the table the context read re-renders the page
    await client.patch(c.url("/api/tables/stats/rows/1"), headers=h, json={"n": 99})
    assert (await client.get(c.url("/answer"))).text == "<p>100</p>"
    # a public page's context has anon's reach: a table anon may not read is refused, not leaked
    leak = 'def context(ctx):\n    return {"rows": ctx.db.query("SELECT * FROM private")}\n'
    r = await client.post(c.url("/api/pages"), headers=h, json={"path": "/leak", "template": "{{#rows}}{{v}}{{/rows}}",
                          "context": leak, "access": "public"})
    assert r.status_code == 201 and r.json()["render_error"] is not None
    assert (await client.get(c.url("/leak"))).status_code >= 400
    # a context that does not compile is refused at save, with its line
    bad = await client.post(c.url("/api/pages"), headers=h, json={"path": "/bad", "template": "x",
                            "context": "def context(ctx):\n    return {\n"})
    body = assert_safe_error(bad, 422)
    assert "line 2" in body["error"]["message"]
