"""The editor's other screens in headless Chromium: unsaved-changes guard and Vim toggle, tables
(paging, filters, edit, delete, SQL create, policies), templates and values, users, config and
the audit log, and a cross-site form post that must be refused."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from support import Server

from .test_editor_flow import PASSWORD, ex, focus_editor, model_value, sign_in, status_message, wait_until, wait_view


class Api:
    """A fresh cenv and its admin's bearer token, for setting up and checking through the API."""

    def __init__(self, base: str) -> None:
        r = httpx.post(base + "/new", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 201, r.text
        self.cenv = r.json()["cenv"]
        self.base = base
        token = httpx.post(f"{base}/{self.cenv}/auth/login", json={"username": "admin", "password": PASSWORD}).json()["token"]
        self.h = {"authorization": f"Bearer {token}"}

    def __call__(self, method: str, path: str, body: Any = None, status: int | None = None) -> Any:
        r = httpx.request(method, f"{self.base}/{self.cenv}{path}", headers=self.h, json=body)
        if status is not None:
            assert r.status_code == status, (r.status_code, r.text)
        return r.json() if r.content else None


def test_unsaved_changes_guard_and_vim_toggle(page: Any, server: Server) -> None:
    api = Api(server.url)
    pid = api("POST", "/api/pages", {"path": "/a", "template": "A"}, 201)["id"]
    sign_in(page, server.url, api.cenv, f"#/pages/{pid}")
    wait_view(page, f"/pages/{pid}")
    focus_editor(page)
    page.keyboard.type("ix")
    page.keyboard.press("Escape")
    assert page.inner_text("#doc-state") == "● unsaved" and page.title().startswith("● ")

    # switching documents asks; "Stay" keeps everything as it was
    page.click("a.nav-head[href='#/tables']")
    page.wait_for_selector("dialog:has-text('Unsaved changes')")
    page.click("dialog button[data-value=cancel]")
    assert view_is(page, f"/pages/{pid}") and page.url.endswith(f"#/pages/{pid}")
    assert model_value(page) == "xA"

    # leaving the page asks too (beforeunload)
    dialogs: list[str] = []

    def on_dialog(d: Any) -> None:
        dialogs.append(d.type)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.close(run_before_unload=True)
    deadline = time.monotonic() + 10
    while not dialogs and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert dialogs == ["beforeunload"] and not page.is_closed()

    # "Save" saves, then goes
    page.click("a.nav-head[href='#/tables']")
    page.click("dialog button[data-value=save]")
    wait_view(page, "/tables")
    assert api("GET", f"/api/pages/{pid}")["template"] == "xA"

    # "Discard" goes without saving
    page.click(f"#nav-pages a[data-path='/pages/{pid}']")
    wait_view(page, f"/pages/{pid}")
    focus_editor(page)
    page.keyboard.type("iy")
    page.keyboard.press("Escape")
    page.click("a.nav-head[href='#/users']")
    page.click("dialog button[data-value=discard]")
    wait_view(page, "/users")
    assert api("GET", f"/api/pages/{pid}")["template"] == "xA"

    # Vim off: remembered by this browser, keys go straight into the text, Ctrl-S saves
    page.click(f"#nav-pages a[data-path='/pages/{pid}']")
    wait_view(page, f"/pages/{pid}")
    page.click("#vim-toggle")
    assert page.inner_text("#vim-toggle") == "Vim: off" and page.inner_text("#vim-status") == ""
    page.reload()
    wait_view(page, f"/pages/{pid}")
    assert page.inner_text("#vim-toggle") == "Vim: off"
    focus_editor(page)
    page.keyboard.press("Control+Home")
    page.keyboard.type("<p>")
    page.keyboard.press("Control+s")
    status_message(page, "Saved /a")
    assert api("GET", f"/api/pages/{pid}")["template"] == "<p>xA"
    page.click("#vim-toggle")
    assert page.inner_text("#vim-toggle") == "Vim: on"
    assert page.inner_text("#vim-status").startswith("--NORMAL--")
    assert page.evaluate("localStorage.getItem('wce.editor.vim')") == "on"

    # the session ends elsewhere while there are unsaved changes: sign in again over the work
    focus_editor(page)
    page.keyboard.type("A!")
    page.keyboard.press("Escape")
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "wce_session")
    assert httpx.post(f"{server.url}/{api.cenv}/auth/logout", cookies={"wce_session": cookie}).status_code == 204
    page.keyboard.press("Control+s")
    page.wait_for_selector("#reauth")
    assert model_value(page) == "<p>xA!" and page.inner_text("#doc-state") == "● unsaved"
    page.fill("#reauth #username", "admin")
    page.fill("#reauth #password", PASSWORD)
    page.click("#reauth #sign-in")
    page.wait_for_selector("#reauth", state="detached")
    page.keyboard.press("Control+s")
    status_message(page, "Saved /a")
    assert api("GET", f"/api/pages/{pid}")["template"] == "<p>xA!"
    assert page.watch.errors(401) == []


def view_is(page: Any, path: str) -> bool:
    return bool(page.evaluate("document.documentElement.dataset.view") == path)


def test_tables(page: Any, server: Server, shots: Path) -> None:
    api = Api(server.url)
    api("POST", "/api/tables", {"sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)"}, 201)
    rows = [{"name": f"item {i}", "qty": i} for i in range(1, 61)]
    rows[6]["name"] = '<img src=x onerror="window.pwned=1">'
    api("POST", "/api/tables/items/rows", rows, 201)
    sign_in(page, server.url, api.cenv, "#/tables/items")
    wait_view(page, "/tables/items")
    page.wait_for_selector("#rows-grid")
    assert page.inner_text("#page-info") == "rows 1–50"

    # user content is text, never markup
    assert page.locator("#rows-grid tr[data-key='7'] td").nth(1).inner_text() == '<img src=x onerror="window.pwned=1">'
    assert page.locator("#rows-grid img").count() == 0 and page.evaluate("window.pwned") is None

    # paging with the `next` cursor
    page.select_option("#limit", "25")
    page.wait_for_selector("#page-info:text-is('rows 1–25')")
    page.click("#next-page")
    page.wait_for_selector("#page-info:text-is('rows 26–50')")
    assert page.locator("#rows-grid tbody tr").first.get_attribute("data-key") == "26"
    page.click("#next-page")
    page.wait_for_selector("#page-info:text-is('rows 51–60')")
    assert page.is_disabled("#next-page")
    page.click("#prev-page")
    page.wait_for_selector("#page-info:text-is('rows 26–50')")

    # filters and order
    page.click("#add-filter")
    page.select_option(".filter .f-col", "qty")
    page.select_option(".filter .f-op", "__gte")
    page.fill(".filter .f-value", "55")
    page.click("#apply-filters")
    page.wait_for_selector("#page-info:text-is('rows 1–6')")
    page.select_option("#order", "-qty")
    page.wait_for_selector("#rows-grid tbody tr[data-key='60']:first-child")

    # edit a row
    page.click("#rows-grid tr[data-key='58'] .edit-row")
    page.fill("dialog input[name=name]", "renamed")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("#rows-grid tr[data-key='58'] td:text-is('renamed')")
    assert api("GET", "/api/tables/items/rows/58") == {"id": 58, "name": "renamed", "qty": 58}
    page.screenshot(path=str(shots / "editor-rows.png"))

    # delete one
    page.click("#rows-grid tr[data-key='59'] .delete-row")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("#page-info:text-is('rows 1–5')")
    assert httpx.get(f"{server.url}/{api.cenv}/api/tables/items/rows/59", headers=api.h).status_code == 404

    # a row policy
    page.click("button[data-tab=access]")
    wait_view(page, "/tables/items/access")
    page.click("#add-policy")
    page.fill(".policy .p-using", "qty > 10")
    page.click("#save-policies")
    status_message(page, "Policies on items saved")
    policies = api("GET", "/api/policies/items")
    assert len(policies) == 1 and policies[0]["role"] == "user" and policies[0]["using"] == "qty > 10", policies

    # a table from SQL, saved with :w
    page.click("a.nav-head[href='#/tables']")
    wait_view(page, "/tables")
    page.click("#new-table")
    wait_view(page, "/tables/new")
    page.click("button[data-tab=sql]")
    page.evaluate("t => wceEditor.getModel().setValue(t)", "CREATE TABLE tags (name TEXT PRIMARY KEY, note TEXT)")
    focus_editor(page)
    ex(page, "w")
    wait_view(page, "/tables/tags")
    tables = {t["name"]: t for t in api("GET", "/api/tables")["tables"]}
    assert [c["name"] for c in tables["tags"]["columns"]] == ["name", "note"]
    assert page.watch.errors(404) == []  # the deleted row, checked from outside


def test_templates_values_and_admin_screens(page: Any, server: Server, shots: Path) -> None:
    api = Api(server.url)
    sign_in(page, server.url, api.cenv, "#/templates")
    wait_view(page, "/templates")

    # a template: a parse error is marked at its line, then fixed
    page.click("text=New template")
    page.fill("dialog input[name=name]", "layout")
    page.click("dialog button[data-value=ok]")
    wait_view(page, "/templates/layout")
    page.evaluate("t => wceEditor.getModel().setValue(t)", "<main>\n{{#items}}\n</main>\n")
    page.click("#save")
    wait_until(page, "monaco.editor.getModelMarkers({owner: 'wce'}).length === 1")
    assert page.evaluate("monaco.editor.getModelMarkers({owner: 'wce'})[0].startLineNumber") == 2
    assert "line 2" in page.inner_text("#problem")
    page.evaluate("t => wceEditor.getModel().setValue(t)", "<main>{{$body}}{{/body}}</main>\n")
    page.click("#save")
    status_message(page, "Saved template layout")
    assert api("GET", "/api/templates/layout")["source"] == "<main>{{$body}}{{/body}}</main>\n"

    # a value: invalid JSON is marked where it breaks, nothing is sent
    page.click("a.nav-head[href='#/values']")
    wait_view(page, "/values")
    page.click("text=New value")
    page.fill("dialog input[name=key]", "site")
    page.fill("dialog textarea[name=value]", '{"title": "Hi"}')
    page.click("dialog button[data-value=ok]")
    wait_view(page, "/values/site")
    page.evaluate("t => wceEditor.getModel().setValue(t)", '{\n  "title": "Hi",\n  oops\n}\n')
    page.click("#save")
    wait_until(page, "monaco.editor.getModelMarkers({owner: 'wce'}).length === 1")
    assert page.evaluate("monaco.editor.getModelMarkers({owner: 'wce'})[0].startLineNumber") == 3
    page.evaluate("t => wceEditor.getModel().setValue(t)", '{"title": "Hello"}')
    page.click("#save")
    status_message(page, "Saved value site")
    assert api("GET", "/api/values/site")["value"] == {"title": "Hello"}

    # a trigger: an unknown name is marked at its line, then fixed
    api("POST", "/api/tables", {"sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)"}, 201)
    page.click("a.nav-head[href='#/triggers']")
    wait_view(page, "/triggers")
    page.click("text=New trigger")
    page.fill("dialog input[name=name]", "count")
    page.fill("dialog input[name=tables]", "orders")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("html[data-view^='/triggers/']", state="attached")
    page.evaluate("t => wceEditor.getModel().setValue(t)", "def on_change(event):\n    print(len(event.changes))\n    nope()\n")
    page.click("#save")
    wait_until(page, "monaco.editor.getModelMarkers({owner: 'wce'}).length === 1")
    assert page.evaluate("monaco.editor.getModelMarkers({owner: 'wce'})[0].startLineNumber") == 3
    page.evaluate("t => wceEditor.getModel().setValue(t)", "def on_change(event):\n    print(len(event.changes))\n")
    page.click("#save")
    status_message(page, "Saved trigger count")
    api("POST", "/api/tables/orders/rows", {"item": "tea"}, 201)
    page.click("a.nav-head[href='#/logs']")
    wait_view(page, "/logs")
    assert page.inner_text("pre.logs").endswith("1")

    # users
    page.click("a.nav-head[href='#/users']")
    wait_view(page, "/users")
    page.click("#new-user")
    page.fill("dialog input[name=username]", "ann")
    page.fill("dialog input[name=password]", "ann password")
    page.fill("dialog input[name=role]", "editor")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("#users tr[data-user=ann]")
    page.click("#users tr[data-user=ann] button:text-is('Disable')")
    page.wait_for_selector("#users tr[data-user=ann] td:text-is('disabled')")
    ann = next(u for u in api("GET", "/api/users")["users"] if u["username"] == "ann")
    assert ann["role"] == "editor" and ann["disabled"] is True
    page.screenshot(path=str(shots / "editor-users.png"))

    # config: a refused value shows why; a good one is saved
    page.click("a.nav-head[href='#/config']")
    wait_view(page, "/config")
    page.fill("#cfg-session_ttl_seconds", "-5")
    page.click("#save")
    page.wait_for_selector(".form-error:not(:empty)")
    page.fill("#cfg-session_ttl_seconds", "3600")
    page.select_option("#cfg-registration", "open")
    page.click("#save")
    status_message(page, "Configuration saved")
    config = api("GET", "/api/config")
    assert config["session_ttl_seconds"] == 3600 and config["registration"] == "open"

    # the audit log, paged
    api("POST", "/api/tables", {"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}, 201)
    api("POST", "/api/tables/t/rows", [{"v": str(i)} for i in range(60)], 201)
    page.click("a.nav-head[href='#/audit']")
    wait_view(page, "/audit")
    assert page.locator("#audit tbody tr").count() == 50
    newest = int(page.locator("#audit tbody tr td").first.inner_text())
    page.screenshot(path=str(shots / "editor-audit.png"))
    page.click("#audit-older")
    page.wait_for_selector(f"#audit tbody tr:first-child td:first-child:text-is('{newest - 50}')")
    assert page.watch.errors(422, 400) == []


def test_cross_site_form_post_is_refused(page: Any, server: Server) -> None:
    """A page on another origin of the same site (another port) posts a form to the cenv's API:
    the browser sends the SameSite=Lax cookie, the gateway refuses the request (403)."""
    api = Api(server.url)
    sign_in(page, server.url, api.cenv)
    wait_view(page, "/pages")
    host = server.url.split("//")[1].split(":")[0]
    with socket.socket() as s:  # a port nobody listens on: Playwright answers for it
        s.bind(("127.0.0.1", 0))
        evil = f"http://{host}:{s.getsockname()[1]}/evil.html"
    target = f"{server.url}/{api.cenv}/api/tables"
    form = (f'<form method="post" action="{target}" enctype="text/plain">'
            f"<input name='{{\"sql\": \"CREATE TABLE pwned (x)\", \"pad\": \"' value='\"}}'></form>"
            "<script>document.forms[0].submit()</script>")
    page.route(evil, lambda route: route.fulfill(status=200, content_type="text/html", body=form))
    with page.expect_response(target) as answer:
        page.goto(evil)
    assert answer.value.status == 403
    assert json.loads(answer.value.text())["error"]["code"] == "forbidden"
    assert [t["name"] for t in api("GET", "/api/tables")["tables"]] == []
    # and the same request from the editor's own origin goes through
    page.goto(f"{server.url}/{api.cenv}/_/")
    wait_view(page, "/pages")
    status = page.evaluate("""async ([url]) => (await fetch(url, {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify({sql: "CREATE TABLE fine (x)"})})).status""", [target])
    assert status == 201
    assert page.watch.errors(403) == []


def test_vim_commands(page: Any, server: Server) -> None:
    """The Vim motions and operators a developer reaches for, on a page's template."""
    api = Api(server.url)
    pid = api("POST", "/api/pages", {"path": "/v", "template": "one\ntwo\nthree"}, 201)["id"]
    sign_in(page, server.url, api.cenv, f"#/pages/{pid}")
    wait_view(page, f"/pages/{pid}")
    focus_editor(page)
    page.keyboard.type("ggo1.5")  # `o` needs Monaco's line operations (editor.action.insertLineAfter)
    page.keyboard.press("Escape")
    assert model_value(page) == "one\n1.5\ntwo\nthree"
    page.keyboard.type("Gdd")
    assert model_value(page) == "one\n1.5\ntwo"
    page.keyboard.type("u")
    assert model_value(page) == "one\n1.5\ntwo\nthree"
    page.keyboard.type("/two")
    page.keyboard.press("Enter")
    page.keyboard.type("cwTWO")
    page.keyboard.press("Escape")
    page.keyboard.type("V")
    assert page.inner_text("#vim-status").startswith("--VISUAL LINE--")
    page.keyboard.press("Escape")
    assert model_value(page) == "one\n1.5\nTWO\nthree"
    ex(page, "w")
    status_message(page, "Saved /v")
    assert api("GET", f"/api/pages/{pid}")["template"] == "one\n1.5\nTWO\nthree"

    # an admins-only page previews too: the sandboxed frame still carries the session cookie
    page.select_option("#page-access", "admin")
    page.keyboard.press("Control+s")
    page.wait_for_selector("#status-message:has-text('Saved /v'):not(:has-text('Not'))")
    assert page.frame_locator("#preview").locator("body").inner_text() == "one 1.5 TWO three"

    # an error at render time (not at save): shown inline, at its line in the context script
    page.click("button[data-tab=context]")
    page.evaluate("t => wceEditor.getModel().setValue(t)", 'def context(ctx):\n    return {"n": 1 // 0}\n')
    page.keyboard.press("Control+s")
    page.wait_for_selector("#render-status.bad")
    assert "context" in page.inner_text("#render-status") and "the last good output is still served" in page.inner_text("#render-status")
    wait_until(page, "monaco.editor.getModelMarkers({owner: 'wce'}).length === 1")
    marker = page.evaluate("(() => { const m = monaco.editor.getModelMarkers({owner: 'wce'})[0]; return [m.resource.path, m.startLineNumber]; })()")
    assert marker[0].endswith("/context") and marker[1] == 2, marker
    assert page.frame_locator("#preview").locator("body").inner_text() == "one 1.5 TWO three"
    assert page.watch.errors() == []
