"""Where a cenv lives in the browser (wce.gateway.origins), over real HTTP, in both URL modes.

Path mode: every answer of a cenv is sandboxed (an opaque origin for what its owner wrote) and
CORS-readable without credentials; the editor shell is the one unsandboxed page. Subdomain mode:
each cenv on its own host, the platform on the apex, `/X/...` on the apex redirected. What a
browser then does with these answers is in tests/browser/test_hostile_tenant.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from support import Cenv, Server, admin_cenv, assert_safe_error, bearer, start_server

from wce.gateway.origins import SANDBOX

PASSWORD = "correct horse"


async def _public_page_and_endpoint(client: httpx.AsyncClient, c: Cenv, url: Callable[[str], str],
                                    host: dict[str, str] | None = None) -> None:
    h = {**bearer(c.admin), **(host or {})}
    r = await client.post(url("/api/pages"), headers=h, json={"path": "/hi", "template": "<p>hi</p>"})
    assert r.status_code == 201, r.text
    r = await client.post(url("/api/endpoints"), headers=h, json={
        "method": "GET", "path": "/js", "access": "public",
        "source": 'def handle_request(ctx):\n    return response(body="alert(1)", content_type="text/javascript",'
                  ' headers={"content-security-policy": "script-src *"})\n'})
    assert r.status_code == 201, r.text


def _sandboxed(r: httpx.Response) -> bool:
    return SANDBOX in r.headers.get_list("content-security-policy")


async def test_path_mode_sandboxes_every_cenv_answer(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    await _public_page_and_endpoint(client, c, c.url)
    answers = {
        "cached page": await client.get(c.url("/hi")),
        "page 304": await client.get(c.url("/hi"), headers={"if-none-match": (await client.get(c.url("/hi"))).headers["etag"]}),
        "endpoint": await client.get(c.url("/fn/js")),
        "front page": await client.get(c.url("/")),
        "api": await client.get(c.url("/api/tables"), headers=bearer(c.admin)),
        "401": await client.get(c.url("/api/users")),
        "404": await client.get(c.url("/nothing-here")),
        "gateway 401": await client.get(c.url("/auth/me"), headers=bearer("not.a.token")),
    }
    for name, r in answers.items():
        assert _sandboxed(r), (name, r.headers)
        assert r.headers["access-control-allow-origin"] == "*", name
        assert "access-control-allow-credentials" not in r.headers, name
    # the owner's own CSP is sent too: browsers enforce both, so it can only narrow ours
    assert answers["endpoint"].headers.get_list("content-security-policy") == ["script-src *", SANDBOX]
    assert answers["cached page"].headers["x-wce-cache"] == "hit"
    # ours, not the tenant's: the editor shell and its assets, and the platform, are not sandboxed
    shell = await client.get(c.url("/_/"))
    assert shell.status_code == 200 and not _sandboxed(shell) and "access-control-allow-origin" not in shell.headers
    assert shell.headers["referrer-policy"] == "no-referrer"  # another cenv's page never learns this one's id
    for path in ("/", "/new", "/healthz"):
        r = await client.get(path)
        assert not _sandboxed(r) and "access-control-allow-origin" not in r.headers, path


async def test_cors_preflight_without_credentials(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    r = await client.options(c.url("/api/tables/notes/rows"), headers={
        "origin": "null", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in r.headers
    # an OPTIONS that is not a preflight is the cenv's: no route answers it
    assert_safe_error(await client.options(c.url("/api/tables")), 405)


async def test_endpoints_may_not_send_headers_that_reach_beyond_the_cenv(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    for i, header in enumerate(("Service-Worker-Allowed", "clear-site-data", "set-cookie", "Access-Control-Allow-Origin",
                                "access-control-allow-credentials")):
        source = f'def handle_request(ctx):\n    return response(body="x", headers={{"{header}": "/"}})\n'
        r = await client.post(c.url("/api/endpoints"), headers=h, json={"method": "GET", "path": f"/h{i}",
                                                                         "source": source, "access": "public"})
        assert r.status_code == 201, r.text
        r = await client.get(c.url(f"/fn/h{i}"), headers=h)  # its admin sees why it failed
        body = assert_safe_error(r, 500, "script_error")
        assert f"may not set the {header} header" in body["error"]["message"], body
        assert header.lower() not in {k.lower() for k in r.headers if k.lower() != "access-control-allow-origin"}


# subdomain mode: a server of its own, cenvs at {id}.localhost (requests name the host in Host:
# httpx connects to 127.0.0.1 whatever the name, as Chromium does for *.localhost)

@pytest.fixture(scope="module")
def sub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("subdomains"), "--cenv-domain", "localhost")
    yield srv
    srv.stop()


def _port(srv: Server) -> str:
    return srv.url.rsplit(":", 1)[1]


def _host(srv: Server, cenv: str | None = None) -> dict[str, str]:
    return {"host": f"{cenv}.localhost:{_port(srv)}" if cenv else f"localhost:{_port(srv)}"}


async def test_subdomain_mode_routes_by_host(sub_server: Server) -> None:
    srv = sub_server
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        r = await client.post("/new", json={"username": "admin", "password": PASSWORD}, headers=_host(srv))
        assert r.status_code == 201, r.text
        cenv = r.json()["cenv"]
        assert r.json()["url"] == f"http://{cenv}.localhost:{_port(srv)}/" == r.headers["location"]
        on = _host(srv, cenv)
        # the cenv's routes at the root of its own host
        r = await client.post("/auth/login", headers=on, json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("wce_session=") and "; Path=/;" in cookie and "domain" not in cookie.lower()
        client.cookies.clear()
        token = r.json()["token"]
        c = Cenv(cenv, token)
        await _public_page_and_endpoint(client, c, lambda p: p, on)  # paths from the root of the cenv's host

        async def get(path: str, **kw: object) -> httpx.Response:
            return await client.get(path, headers={**on, **kw.pop("headers", {})}, **kw)  # type: ignore[arg-type]

        assert (await get("/hi")).text == "<p>hi</p>"
        r = await get("/api/tables", headers=bearer(token))
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert not _sandboxed(r) and not _sandboxed(await get("/hi"))  # its own origin: not sandboxed
        assert (await get("/api/openapi.json", headers=bearer(token))).json()["servers"] == [{"url": "/"}]
        home = await get("/")
        assert home.status_code == 200 and "curl -X POST /auth/login" in home.text  # its URLs are the host's
        # the editor and its assets are on the cenv's host too
        shell = await get("/_/")
        assert shell.status_code == 200 and "/_/assets/" in shell.text
        asset = shell.text.split('src="')[1].split('"')[0]
        assert (await get(asset)).status_code == 200
        r = await get("/_")
        assert r.status_code == 308 and r.headers["location"] == "/_/"
        # a cenv's paths on the apex go to its host, query string and all (308 keeps the method)
        r = await client.get(f"/{cenv}/api/tables?limit=5", headers=_host(srv))
        assert r.status_code == 308
        assert r.headers["location"] == f"http://{cenv}.localhost:{_port(srv)}/api/tables?limit=5"
        r = await client.post(f"/{cenv}", headers=_host(srv))
        assert r.status_code == 308 and r.headers["location"] == f"http://{cenv}.localhost:{_port(srv)}/"
        # the apex is the platform's only: no cenv there
        assert (await client.get("/healthz", headers=_host(srv))).status_code == 200
        assert_safe_error(await client.get("/hi", headers=_host(srv)), 404)
        # a host that is not a cenv id under the domain is no cenv
        for other in (f"nope.localhost:{_port(srv)}", f"a.{cenv}.localhost:{_port(srv)}", f"{cenv}.localhostx"):
            assert (await client.get("/hi", headers={"host": other})).status_code == 404
        # an unknown id on its own host: 404, as in path mode
        assert_safe_error(await client.get("/hi", headers=_host(srv, "a" * 26)), 404)


async def test_subdomain_mode_keeps_cenvs_apart(sub_server: Server) -> None:
    srv = sub_server
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        ids = []
        for _ in range(2):
            r = await client.post("/new", json={"username": "admin", "password": PASSWORD}, headers=_host(srv))
            ids.append(r.json()["cenv"])
        a, b = ids
        r = await client.post("/auth/login", headers=_host(srv, b), json={"username": "admin", "password": PASSWORD})
        b_cookie = r.cookies["wce_session"]
        b_token = r.json()["token"]
        client.cookies.clear()
        # B's token and cookie mean nothing on A's host
        assert_safe_error(await client.get("/auth/me", headers={**_host(srv, a), **bearer(b_token)}), 401)
        assert_safe_error(await client.get("/auth/me", headers={**_host(srv, a), "cookie": f"wce_session={b_cookie}"}), 401)
        # on B's host, B's cookie from B's own pages works; from a sibling (same-site, another
        # origin) a write is refused and a read is anonymous
        jar = {**_host(srv, b), "cookie": f"wce_session={b_cookie}"}
        assert (await client.get("/auth/me", headers={**jar, "sec-fetch-site": "same-origin"})).status_code == 200
        sibling = {"sec-fetch-site": "same-site", "origin": f"http://{a}.localhost:{_port(srv)}", "sec-fetch-mode": "cors"}
        assert_safe_error(await client.get("/auth/me", headers={**jar, **sibling}), 401)
        assert_safe_error(await client.post("/api/users", headers={**jar, **sibling},
                                            json={"username": "eve", "password": PASSWORD, "role": "admin"}), 403)
        users = (await client.get("/api/users", headers={**_host(srv, b), **bearer(b_token)})).json()["users"]
        assert [u["username"] for u in users] == ["admin"]


def test_session_cookie_names() -> None:
    from wce.responses import session_cookie

    assert session_cookie(subdomains=True, https=True) == "__Host-wce_session"
    assert session_cookie(subdomains=True, https=False) == "wce_session"
    assert session_cookie(subdomains=False, https=True) == "wce_session"  # __Host- needs Path=/


def test_host_parsing() -> None:
    from wce.gateway.origins import Origins

    o = Origins("Example.NET.")
    cenv = "a" * 26
    for host, want in ((f"{cenv}.example.net", cenv), (f"{cenv}.EXAMPLE.net:8443", cenv), ("example.net", None),
                       (f"x.{cenv}.example.net", None), (f"{cenv}.example.net.evil", None), ("[::1]:5309", None),
                       (f"{cenv[:-1]}.example.net", None), ("", None)):
        assert o.cenv_of_host([(b"host", host.encode())]) == want, host
    assert o.cenv_of_host([]) is None
    assert o.cenv_url("https", "example.net", cenv) == f"https://{cenv}.example.net/"
    assert o.cenv_url("http", "example.net:8080", cenv) == f"http://{cenv}.example.net:8080/"
    assert Origins().cenv_url("http", "h:1", cenv) == f"http://h:1/{cenv}/"


async def test_login_cookie_secure_over_https_is_host_prefixed(tmp_path: Path) -> None:
    """Over https (as a trusted proxy reports it), a cenv on its own host gets a `__Host-` cookie,
    and the gateway reads only that one: a plain `wce_session` cookie (which a sibling subdomain
    could set for the whole domain) is ignored."""
    srv = start_server(tmp_path, "--cenv-domain", "localhost", "--forwarded-allow-ips", "127.0.0.1")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            https = {"x-forwarded-proto": "https"}
            r = await client.post("/new", json={"username": "admin", "password": PASSWORD}, headers={**_host(srv), **https})
            cenv = r.json()["cenv"]
            assert r.json()["url"] == f"https://{cenv}.localhost:{_port(srv)}/"
            on = {**_host(srv, cenv), **https}
            r = await client.post("/auth/login", headers=on, json={"username": "admin", "password": PASSWORD})
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("__Host-wce_session=") and "; Path=/;" in cookie and "; Secure" in cookie
            value = cookie.split("=", 1)[1].split(";")[0]
            client.cookies.clear()
            assert (await client.get("/auth/me", headers={**on, "cookie": f"__Host-wce_session={value}"})).status_code == 200
            assert_safe_error(await client.get("/auth/me", headers={**on, "cookie": f"wce_session={value}"}), 401)
    finally:
        srv.stop()
