"""Platform routes: landing, /new (HTML and JSON), health, ids, body limits."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from support import Server, assert_safe_error, new_cenv, start_server


async def test_landing_and_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200 and 'href="/new"' in r.text
    h = await client.get("/healthz")
    assert h.json()["status"] == "ok" and isinstance(h.json()["workers"], int)


async def test_new_form_and_html_creation(client: httpx.AsyncClient, server: Server) -> None:
    form = await client.get("/new")
    assert form.status_code == 200 and '<form method="post" action="/new">' in form.text
    assert "content-security-policy" in form.headers
    r = await client.post("/new", data={"username": "webadmin", "password": "a good password"})
    assert r.status_code == 201
    assert "Bookmark" in r.text
    url = r.text.split('<a href="')[1].split('"')[0]
    assert url.startswith(server.url + "/") and url.endswith("/_/")  # the editor, at the cenv's own address
    cenv = url[len(server.url) + 1:].split("/")[0]
    assert (server.data / f"{cenv}.sqlite").exists()
    bad = await client.post("/new", data={"username": "<script>x</script>", "password": "a good password"})
    assert bad.status_code == 400 and "<script>x" not in bad.text and "&lt;script&gt;" in bad.text


async def test_new_json_validation(client: httpx.AsyncClient, server: Server) -> None:
    before = set(server.data.iterdir())
    for body in ({"username": "ok"}, {"username": "ok", "password": "short"}, {"username": "", "password": "long enough"},
                 {"username": "a b", "password": "long enough"}, [1]):
        assert_safe_error(await client.post("/new", json=body), 400, "bad_request")
    assert_safe_error(await client.post("/new", content=b"{bad", headers={"content-type": "application/json"}), 400)
    assert set(server.data.iterdir()) == before  # nothing half-made


async def test_ids_that_never_touch_the_disk(client: httpx.AsyncClient, server: Server) -> None:
    for path in ("/notacenv/auth/me", "/AAAAAAAAAAAAAAAAAAAAAAAAAA/", "/aaaaaaaaaaaaaaaaaaaaaaaaa1/", "/../etc/passwd",
                 "/aaaaaaaaaaaaaaaaaaaaaaaaaaa/", "/%2e%2e/x"):
        assert_safe_error(await client.get(path), 404, "not_found")
    # well-shaped but unknown
    assert_safe_error(await client.get("/aaaaaaaaaaaaaaaaaaaaaaaaaa/auth/me"), 404, "not_found")
    assert not (server.data / "aaaaaaaaaaaaaaaaaaaaaaaaaa.sqlite").exists()


async def test_cenv_root_redirects_and_serves(client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    r = await client.get(f"/{cenv}")
    assert r.status_code == 308 and r.headers["location"] == f"/{cenv}/"
    assert (await client.get(f"/{cenv}/")).status_code == 200


# httpx abandons our streaming generator when the server answers early: that is the point
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_two_mib_body_is_413(client: httpx.AsyncClient) -> None:
    cenv = await new_cenv(client)
    big = b"x" * (2 << 20)
    r = await client.post(f"/{cenv}/auth/login", content=big, headers={"content-type": "application/json"})
    assert_safe_error(r, 413, "too_large")
    r = await client.post("/new", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    async def chunks():  # no content-length: counted while streaming
        for _ in range(40):
            yield b"y" * 65536
    r = await client.post(f"/{cenv}/auth/login", content=chunks())
    assert_safe_error(r, 413, "too_large")


async def test_new_is_rate_limited_and_can_be_turned_off(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "a", "--new-per-hour", "2")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            await new_cenv(client)
            await new_cenv(client)
            r = await client.post("/new", json={"username": "admin", "password": "correct horse"})
            assert_safe_error(r, 429, "rate_limited")
            assert int(r.headers["retry-after"]) > 0
    finally:
        srv.stop()
    os.makedirs(tmp_path / "b")
    srv = start_server(tmp_path / "b", "--no-public-new")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            r = await client.post("/new", json={"username": "admin", "password": "correct horse"})
            assert_safe_error(r, 403, "forbidden")
            assert (await client.get("/new")).status_code == 403
    finally:
        srv.stop()
