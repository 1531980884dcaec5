"""A cenv owner's day in the browser editor, in headless Chromium against the real server.

Create a cenv from /new, sign in, create a table, add a row, grant it to anon, write a page that
lists it and see it in the preview and at its public URL, edit it in Vim mode (i, typing, Esc,
:w), write an endpoint with a syntax error and see the marker at its line, fix it, run the test
panel, sign out and be refused. No console errors at any step.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from support import Server

PASSWORD = "correct horse"


def wait_view(page: Any, path: str) -> None:
    page.wait_for_selector(f"html[data-view='{path}']", state="attached")


def view_path(page: Any) -> str:
    return str(page.evaluate("document.documentElement.dataset.view"))


def sign_in(page: Any, base: str, cenv: str, hash_: str = "") -> None:
    page.goto(f"{base}/{cenv}/_/{hash_}")
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_selector("html[data-view]", state="attached")


def model_value(page: Any) -> str:
    return str(page.evaluate("wceEditor.getModel().getValue()"))


def focus_editor(page: Any) -> None:
    page.click(".monaco-editor .view-lines")
    assert page.evaluate("wceEditor.hasTextFocus()")


def vim(page: Any, keys: str) -> None:
    """Type keys into the focused editor (normal-mode commands or inserted text)."""
    page.keyboard.type(keys)


def ex(page: Any, command: str) -> None:
    page.keyboard.type(":" + command)
    page.keyboard.press("Enter")


def status_message(page: Any, text: str) -> None:
    page.wait_for_selector(f"#status-message:has-text({json.dumps(text)})")


def wait_until(page: Any, expression: str, timeout: float = 15) -> Any:
    """Poll a JS expression until it is truthy. (wait_for_function evaluates strings with eval,
    which the editor's CSP rightly refuses; page.evaluate goes through the debugger protocol.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(50)


def test_owner_day(page: Any, server: Server, shots: Path) -> None:
    base = server.url
    # /new: create the cenv; its result page links straight into the editor
    page.goto(base + "/new")
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.click("text=Open the editor")
    page.wait_for_selector("#login-form")
    cenv = page.url.split("/")[3]
    assert page.url == f"{base}/{cenv}/_/"
    page.screenshot(path=str(shots / "editor-login.png"))
    page.fill("#username", "admin")
    page.fill("#password", "wrong password")
    page.click("#sign-in")
    page.wait_for_selector("#login-error:has-text('Wrong username or password')")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    wait_view(page, "/pages")
    assert page.inner_text("#who") == "admin · admin"

    # a table from the columns form
    page.click("a.nav-head[href='#/tables']")
    wait_view(page, "/tables")
    page.click("#new-table")
    wait_view(page, "/tables/new")
    page.fill("#table-name", "notes")
    page.locator(".col-name").nth(1).fill("body")
    page.locator(".col-notnull").nth(1).check()
    page.click("#create-table")
    wait_view(page, "/tables/notes")
    assert page.locator("#nav-tables a", has_text="notes").count() == 1

    # a row, through the insert dialog
    page.click("#insert-row")
    page.fill("dialog input[name=body]", "first note")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("#rows-grid td:has-text('first note')")

    # a public page reads with anon's grants: grant select to anon
    page.click("button[data-tab=access]")
    wait_view(page, "/tables/notes/access")
    page.check("#grants tr[data-role=anon] .grant-select")
    page.click("#save-grants")
    status_message(page, "Grants on notes saved")
    page.screenshot(path=str(shots / "editor-grants.png"))

    # a page listing the table, typed in Vim mode
    page.click("a.nav-head[href='#/pages']")
    wait_view(page, "/pages")
    page.click("#new-page")
    page.fill("dialog input[name=path]", "/notes")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("html[data-view^='/pages/']", state="attached")
    page_id = view_path(page).rsplit("/", 1)[1]
    focus_editor(page)
    assert page.inner_text("#vim-status").startswith("--NORMAL--")
    vim(page, "ggdG")
    vim(page, "i<ul>{{#notes}}<li>{{body}}</li>{{/notes}}</ul>")
    assert page.inner_text("#vim-status").startswith("--INSERT--")
    page.keyboard.press("Escape")
    assert page.inner_text("#vim-status").startswith("--NORMAL--")
    assert model_value(page) == "<ul>{{#notes}}<li>{{body}}</li>{{/notes}}</ul>"
    assert page.inner_text("#doc-state") == "● unsaved"
    page.click("button[data-tab=queries]")
    focus_editor(page)
    vim(page, "i-- name: notes\nSELECT body FROM notes ORDER BY id")
    page.keyboard.press("Escape")
    ex(page, "w")
    status_message(page, "Saved /notes")
    assert page.inner_text("#doc-state") == "saved"
    preview = page.frame_locator("#preview")
    assert preview.locator("li").inner_text() == "first note"
    assert page.get_attribute("#preview", "sandbox") == "allow-scripts"
    public = httpx.get(f"{base}/{cenv}/notes")
    assert public.status_code == 200 and "<ul><li>first note</li></ul>" in public.text

    # edit in Vim mode: i, typing, Esc, :w; the preview and the public page follow
    page.click("button[data-tab=template]")
    focus_editor(page)
    vim(page, "gg0i<h1>Notes</h1>")
    page.keyboard.press("Escape")
    ex(page, "w")
    assert preview.locator("h1").inner_text() == "Notes"
    assert "<h1>Notes</h1><ul><li>first note</li></ul>" in httpx.get(f"{base}/{cenv}/notes").text
    assert page.locator("#render-status").inner_text().startswith("Rendered")
    page.screenshot(path=str(shots / "editor-page.png"))

    # a render error is shown inline, at its line, and the last good output stays in service
    page.click("button[data-tab=queries]")
    page.evaluate("t => wceEditor.getModel().setValue(t)", "-- name: notes\nSELECT body FROM notes ORDER BY id\n\n-- name: extra\nSELECT nope FROM notes")
    page.keyboard.press("Control+s")
    page.wait_for_selector("button[data-tab=queries].has-error")
    markers = page.evaluate("monaco.editor.getModelMarkers({owner: 'wce'}).map(m => [m.resource.path, m.startLineNumber, m.message])")
    assert len(markers) == 1 and markers[0][0].endswith("/queries") and markers[0][1] == 4 and "nope" in markers[0][2], markers
    assert "nope" in page.inner_text("#status-message")
    focus_editor(page)
    vim(page, "Gdk")  # the extra query: its header and its line
    page.keyboard.press("Control+s")
    status_message(page, "Saved /notes")
    assert page.evaluate("monaco.editor.getModelMarkers({owner: 'wce'}).length") == 0

    # an endpoint with a syntax error: the marker is at the line and column the API names
    page.click("a.nav-head[href='#/endpoints']")
    wait_view(page, "/endpoints")
    page.click("#new-endpoint")
    page.select_option("dialog select[name=access]", "public")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("html[data-view^='/endpoints/']", state="attached")
    source = ('def handle_request(ctx):\n    print("hello", ctx.params["name"])\n    x = = 1\n'
              '    return {"hello": ctx.params["name"]}\n')
    page.evaluate("t => wceEditor.getModel().setValue(t)", source)
    page.click("#save")
    wait_until(page, "monaco.editor.getModelMarkers({owner: 'wce'}).length === 1")
    marker = page.evaluate("(() => { const m = monaco.editor.getModelMarkers({owner: 'wce'})[0];"
                           " return [m.startLineNumber, m.startColumn, m.message]; })()")
    message = page.inner_text("#status-message")
    where = re.search(r"line (\d+), column (\d+)", message)
    assert where and marker[:2] == [int(where.group(1)), int(where.group(2))] == [3, 9], (marker, message)
    page.wait_for_selector(".monaco-editor .squiggly-error")
    page.screenshot(path=str(shots / "editor-endpoint-error.png"))
    focus_editor(page)
    vim(page, "3Gdd")
    ex(page, "w")
    status_message(page, "Saved GET /fn/hello/{name}")
    assert page.evaluate("monaco.editor.getModelMarkers({owner: 'wce'}).length") == 0
    page.fill("#test-path", "/hello/bob")
    page.click("#run-test")
    page.wait_for_selector("#test-status")
    assert page.inner_text("#test-status") == "200"
    assert '"hello": "bob"' in page.inner_text("#test-body-out")
    assert page.inner_text("#test-printed") == "hello bob"
    assert re.fullmatch(r"[\d.]+ ms", page.inner_text("#test-duration"))
    page.screenshot(path=str(shots / "editor-endpoint-test.png"))
    assert httpx.get(f"{base}/{cenv}/fn/hello/ann").json() == {"hello": "ann"}

    # the table's rows, for the README
    page.click("#nav-tables a:has-text('notes')")
    wait_view(page, "/tables/notes")
    page.wait_for_selector("#rows-grid")
    page.screenshot(path=str(shots / "editor-table.png"))

    # sign out: the session is revoked, the editor asks for a password again
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "wce_session")
    page.click("#sign-out")
    page.wait_for_selector("#login-form")
    assert "You are signed out." in page.inner_text("#login-error")
    refused = httpx.get(f"{base}/{cenv}/api/pages", cookies={"wce_session": cookie})
    assert refused.status_code == 401
    page.goto(f"{base}/{cenv}/_/#/pages/{page_id}")
    page.wait_for_selector("#login-form")
    status = page.evaluate(f"fetch('/{cenv}/api/pages').then(r => r.status)")
    assert status == 401
    assert page.watch.errors(422, 401) == []
