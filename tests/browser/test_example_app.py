"""The notes example (docs/examples/notes-app.json) in headless Chromium, in both URL modes.

The test installs the example through the API exactly as docs/examples/README.md does, then
drives its page as a user would: sign in (a wrong password first), see the rows, add one, and
see a row that another client inserts appear through `api/events`. In path mode the page runs
sandboxed in an opaque origin, so this also shows that a page's own JavaScript works there with a
Bearer token and the API's CORS answers; in subdomain mode it runs in the cenv's own origin.
"""

from __future__ import annotations

import json
from typing import Any

from support import ROOT

from .test_hostile_tenant import PASSWORD, WAIT, Site, Tenant, site  # noqa: F401 (site is a fixture)

EXAMPLE = ROOT / "docs" / "examples" / "notes-app.json"


def install(t: Tenant) -> dict[str, Any]:
    """The example's steps, as the README's curl commands take them; the example itself."""
    ex: dict[str, Any] = json.loads(EXAMPLE.read_text())
    t.api("POST", "api/tables", ex["table"], 201)
    t.api("PUT", f"api/permissions/{ex['table']['name']}", ex["permissions"], 200)
    t.api("POST", "api/users", ex["user"], 201)
    t.api("POST", "api/pages", {**ex["page"], "template": "\n".join(ex["page"]["template"])}, 201)
    return ex


def notes(page: Any) -> list[str]:
    return [str(x) for x in page.locator("#notes li").all_inner_texts()]


def wait_note(page: Any, text: str) -> None:
    page.wait_for_selector(f"#notes li:text-is({json.dumps(text)})", timeout=WAIT * 1000)


def test_notes_example(page: Any, site: Site) -> None:  # noqa: F811 (the imported fixture)
    t = site.new_cenv("admin", PASSWORD)
    ex = install(t)
    user = ex["user"]
    t.api("POST", "api/tables/notes/rows", {"body": "first note"}, 201)
    # the page is served as written (the template has no Mustache tags)
    served = site.request("GET", t.root + "app")
    assert served.status_code == 200 and served.text == "\n".join(ex["page"]["template"])

    page.goto(t.root + "app")
    # where the page runs: sandboxed (an opaque origin) in path mode, the cenv's own origin otherwise
    origin = page.evaluate("self.origin")
    assert origin == ("null" if site.mode == "path" else t.root.rstrip("/")), origin
    storage = page.evaluate("(() => { try { return typeof localStorage.length; } catch (e) { return e.name; } })()")
    assert storage == ("SecurityError" if site.mode == "path" else "number"), storage

    # sign in: a wrong password is refused, the right one shows the list
    page.fill("#username", user["username"])
    page.fill("#password", "not the password")
    page.click("#sign-in")
    page.wait_for_selector("#login-error:has-text('Wrong username or password.')", timeout=WAIT * 1000)
    page.fill("#password", user["password"])
    page.click("#sign-in")
    wait_note(page, "first note")
    assert page.inner_text("#who") == user["username"]
    assert page.is_hidden("#login")

    # add a note from the page: it is in the table, and in the list
    page.fill("#body", "from the page")
    page.click("#add-note")
    wait_note(page, "from the page")
    rows = t.api("GET", "api/tables/notes/rows?order=id", status=200)["rows"]
    assert [r["body"] for r in rows] == ["first note", "from the page"]
    assert page.input_value("#body") == ""

    # another client adds one: it shows up through the page's event stream (the page never polls)
    page.wait_for_selector("body[data-events='live']", state="attached", timeout=WAIT * 1000)
    other = t.login(user["username"], user["password"])
    t.api("POST", "api/tables/notes/rows", {"body": "from another client"}, 201, token=other)
    wait_note(page, "from another client")
    assert notes(page) == ["first note", "from the page", "from another client"]
    assert page.inner_text("#app-error") == ""
    assert page.watch.errors(401) == []
