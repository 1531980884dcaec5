"""The editor in subdomain mode (`--cenv-domain localhost`), in headless Chromium: /new on the apex
links to the cenv's own host, where the editor loads, signs in with a host-only cookie, saves a
page and previews it, with no console error (CSP, worker, assets) on the way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import Server, start_server
from tests.browser.test_editor_flow import PASSWORD, status_message, wait_view


@pytest.fixture(scope="module")
def sub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("editor-subdomains"), "--cenv-domain", "localhost")
    yield srv
    srv.stop()


def test_editor_on_the_cenvs_own_host(page: Any, sub_server: Server) -> None:
    port = sub_server.url.rsplit(":", 1)[1]
    apex = f"http://localhost:{port}"
    page.goto(apex + "/new")
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.click("text=Open the editor")
    page.wait_for_selector("#login-form")
    host = page.url.split("/")[2]
    cenv = host.split(".")[0]
    assert page.url == f"http://{cenv}.localhost:{port}/_/"
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    wait_view(page, "/pages")
    cookies = page.context.cookies()
    assert [(c["name"], c["domain"], c["path"]) for c in cookies] == [("wce_session", f"{cenv}.localhost", "/")]

    page.click("#new-page")
    page.fill("dialog input[name=path]", "/hello")
    page.click("dialog button[data-value=ok]")
    page.wait_for_selector("html[data-view^='/pages/']", state="attached")
    page.evaluate("t => wceEditor.getModel().setValue(t)", "<h1>Hello from {{page.path}}</h1>")
    page.keyboard.press("Control+s")
    status_message(page, "Saved /hello")
    assert page.frame_locator("#preview").locator("h1").inner_text() == "Hello from /hello"
    # the site link and the page are at the root of the cenv's host
    assert page.get_attribute("a.site-link", "href") == "/"
    r = httpx.get(f"{sub_server.url}/hello", headers={"host": host})
    assert r.status_code == 200 and "Hello from /hello" in r.text
    assert page.watch.errors() == []
    # the old path form on the apex goes to the cenv's host (which has no /favicon.ico: a 404 the
    # browser may ask for)
    page.goto(f"{apex}/{cenv}/hello")
    assert page.url == f"http://{cenv}.localhost:{port}/hello"
    assert "Hello from /hello" in page.content()
    assert [u for s, u in page.watch.statuses if not u.endswith("/favicon.ico")] == []
