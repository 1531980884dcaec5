"""The editor's HTTP side, without a browser: the shell page and its headers (CSP), the hashed
assets (immutable caching, precompressed), and the gateway's CSRF check on cookie-authenticated
state-changing requests."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from support import Server, assert_safe_error, new_cenv

from .conftest import MANIFEST, _build_editor

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def manifest() -> Iterator[dict[str, object]]:
    _build_editor()
    yield json.loads(MANIFEST.read_text())


async def test_shell_page(client: httpx.AsyncClient, manifest: dict[str, object]) -> None:
    cenv = await new_cenv(client)
    r = await client.get(f"/{cenv}/_/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["worker-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-eval" not in csp and "'unsafe-inline'" not in directives["script-src"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    names = [manifest["app"], manifest["worker"], *manifest["css"], *manifest["preload"]]  # type: ignore[misc]
    for name in names:
        assert f'"/_/assets/{name}"' in r.text
    assert "<script>" not in r.text and "style=" not in r.text  # nothing inline
    head = await client.head(f"/{cenv}/_/")
    assert head.status_code == 200 and head.content == b""
    moved = await client.get(f"/{cenv}/_")
    assert moved.status_code == 308 and moved.headers["location"] == f"/{cenv}/_/"
    assert_safe_error(await client.get(f"/{cenv}/_/other"), 404)
    assert_safe_error(await client.post(f"/{cenv}/_/"), 405)
    assert_safe_error(await client.get(f"/{'a' * 26}/_/"), 404)  # no such cenv


async def test_assets(client: httpx.AsyncClient, manifest: dict[str, object]) -> None:
    from .conftest import ROOT

    dist = ROOT / "static" / "dist"
    assert re.fullmatch(r"app-[A-Z0-9]{8}\.js", str(manifest["app"]))
    for name in manifest["sizes"]:  # type: ignore[attr-defined]
        raw = (dist / name).read_bytes()
        for accept, encoding, expected in (("br, gzip", "br", (dist / f"{name}.br").read_bytes()),
                                           ("gzip, br;q=0", "gzip", (dist / f"{name}.gz").read_bytes()),
                                           ("identity", None, raw)):
            async with client.stream("GET", f"/_/assets/{name}", headers={"accept-encoding": accept}) as r:
                body = b"".join([chunk async for chunk in r.aiter_raw()])
            assert r.status_code == 200, name
            assert r.headers.get("content-encoding") == encoding and body == expected
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert r.headers["vary"] == "accept-encoding" and r.headers["x-content-type-options"] == "nosniff"
        assert gzip.decompress((dist / f"{name}.gz").read_bytes()) == raw
    js = await client.get(f"/_/assets/{manifest['app']}")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    for path in ("/_/assets/manifest.json", "/_/assets/%2e%2e/manifest.json", "/_/assets/", "/_/assets/nope.js"):
        assert_safe_error(await client.get(path), 404)
    assert_safe_error(await client.post(f"/_/assets/{manifest['app']}"), 405)


async def _cookie(client: httpx.AsyncClient, cenv: str) -> str:
    r = await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200
    client.cookies.clear()
    return str(r.cookies["wce_session"])


async def test_csrf_check(client: httpx.AsyncClient, server: Server) -> None:
    cenv = await new_cenv(client)
    cookie = await _cookie(client, cenv)
    host = server.url.split("//")[1]
    jar = {"cookie": f"wce_session={cookie}"}
    url = f"/{cenv}/api/tables"

    def table(name: str) -> dict[str, str]:
        return {"sql": f"CREATE TABLE {name} (x)"}

    # cross-origin, by cookie: refused before the worker sees it
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"},
                    {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site", "origin": f"http://{host}"},
                    {"origin": f"https://{host}.evil.example"}):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            body = assert_safe_error(await client.request(method, url, headers={**jar, **headers}, json=table("t1")), 403, "forbidden")
            assert "cross-site request refused" in body["error"]["message"]
    # same origin, or no browser at all: allowed
    assert (await client.post(url, headers={**jar, "origin": f"http://{host}"}, json=table("t2"))).status_code == 201
    assert (await client.post(url, headers={**jar, "sec-fetch-site": "same-origin", "origin": f"http://{host}"},
                              json=table("t3"))).status_code == 201
    assert (await client.post(url, headers=jar, json=table("t4"))).status_code == 201
    # a Bearer token is not sent by browsers on their own: never refused here
    token = (await client.post(f"/{cenv}/auth/login", json={"username": "admin", "password": PASSWORD})).json()["token"]
    client.cookies.clear()
    r = await client.post(url, headers={"authorization": f"Bearer {token}", "origin": "http://evil.example",
                                        "sec-fetch-site": "cross-site"}, json=table("t5"))
    assert r.status_code == 201
    # a cross-origin read with the cookie goes on as anonymous (a sandboxed page, a sibling subdomain) ...
    anon = (await client.get(url, headers={**jar, "origin": "http://evil.example", "sec-fetch-site": "cross-site",
                                            "sec-fetch-mode": "cors", "sec-fetch-dest": "empty"})).json()["tables"]
    assert anon == []
    r = await client.get(f"/{cenv}/auth/me", headers={**jar, "sec-fetch-site": "same-site", "sec-fetch-mode": "cors"})
    assert_safe_error(r, 401)
    # ... but a top-level navigation from elsewhere is signed in (a link to a signed-in page)
    r = await client.get(f"/{cenv}/auth/me", headers={**jar, "sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate",
                                                      "sec-fetch-dest": "document"})
    assert r.status_code == 200 and r.json()["username"] == "admin"
    r = await client.get(f"/{cenv}/auth/me", headers={**jar, "sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate",
                                                      "sec-fetch-dest": "iframe"})
    assert_safe_error(r, 401)  # framed by another site: not signed in
    # without the cookie there is nothing to ride on: the request goes on as anonymous
    assert_safe_error(await client.post(url, headers={"origin": "http://evil.example"}, json=table("t6")), 401)
    # signing in from another origin gives the token in the body and no cookie (no login CSRF)
    r = await client.post(f"/{cenv}/auth/login", headers={"origin": "null", "sec-fetch-site": "cross-site"},
                          json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["token"] and "set-cookie" not in r.headers
    r = await client.post(f"/{cenv}/auth/login", headers={"origin": f"http://{host}", "sec-fetch-site": "same-origin"},
                          json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200 and "wce_session=" in r.headers["set-cookie"]
    client.cookies.clear()
    # logging out someone from another origin, by their cookie, is refused
    assert_safe_error(await client.post(f"/{cenv}/auth/logout", headers={**jar, "sec-fetch-site": "same-site"}), 403)
    assert (await client.get(f"/{cenv}/auth/me", headers=jar)).status_code == 200
    names = {t["name"] for t in (await client.get(url, headers={"authorization": f"Bearer {token}"})).json()["tables"]}
    assert names == {"t2", "t3", "t4", "t5"}
