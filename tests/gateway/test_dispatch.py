"""The ASGI dispatcher in-process (httpx.ASGITransport): which path a request takes, before any
worker is involved. The supervisor here is a recorder, so a test fails if a request that must
never touch the disk reaches it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from wce.config import ServerConfig
from wce.core.errors import NotFound
from wce.gateway.asgi import Gateway, credentials, read_body
from wce.gateway.platform import create_platform_app


class RecordingSupervisor:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.zygote = None

    def live(self, cenv: str) -> Any:
        return None  # no worker is running: the page fast path has nothing to serve

    async def get(self, cenv: str) -> Any:
        self.asked.append(cenv)
        raise NotFound("no such cenv")

    def statistics(self) -> Any:
        class S:
            live = 0
        return S()


@pytest.fixture
def setup() -> tuple[httpx.AsyncClient, RecordingSupervisor]:
    config = ServerConfig(max_body=1000)
    sup = RecordingSupervisor()
    app = Gateway(config, sup, create_platform_app(config, sup))  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return client, sup


async def test_bad_ids_never_reach_the_supervisor(setup: tuple[httpx.AsyncClient, RecordingSupervisor]) -> None:
    client, sup = setup
    for path in ("/x/auth/me", "/AAAAAAAAAAAAAAAAAAAAAAAAAA/auth/me", "/aaaaaaaaaaaaaaaaaaaaaaaaa/",
                 "/aaaaaaaaaaaaaaaaaaaaaaaaaaa/", "/aaaaaaaaaaaaaaaaaaaaaaaaa8/", "/aaaaaaaaaaaaaaaaaaaaaaaaaaxyz"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    assert sup.asked == []
    # positive control: a well-shaped id does reach it
    r = await client.get("/aaaaaaaaaaaaaaaaaaaaaaaaaa/auth/me")
    assert r.status_code == 404 and sup.asked == ["aaaaaaaaaaaaaaaaaaaaaaaaaa"]


async def test_body_limit_is_checked_before_the_worker(setup: tuple[httpx.AsyncClient, RecordingSupervisor]) -> None:
    client, sup = setup
    r = await client.post("/aaaaaaaaaaaaaaaaaaaaaaaaaa/auth/login", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = await client.post("/new", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert sup.asked == []


async def test_platform_404_and_405_are_json(setup: tuple[httpx.AsyncClient, RecordingSupervisor]) -> None:
    client, _ = setup
    r = await client.get("/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": {"code": "not_found", "message": "no such page"}}
    r = await client.delete("/new")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_credentials_parsing() -> None:
    assert credentials([(b"authorization", b"Bearer abc")]) == ("abc", "bearer")
    assert credentials([(b"authorization", b"bearer abc")]) == ("abc", "bearer")
    assert credentials([(b"authorization", b"Basic abc")]) == ("", "bearer")
    assert credentials([(b"cookie", b"a=1; wce_session=tok; b=2")]) == ("tok", "cookie")
    assert credentials([(b"cookie", b"a=1"), (b"authorization", b"Bearer x")]) == ("x", "bearer")
    assert credentials([]) == (None, "cookie")


async def test_a_bodiless_http1_request_is_not_awaited_for_a_body() -> None:
    async def must_not_be_called() -> dict[str, object]:
        raise AssertionError("receive() awaited for a request without a body")

    for version in ("1.1", "1.0"):
        scope = {"http_version": version, "headers": [(b"host", b"x")]}
        assert await read_body(scope, must_not_be_called, 100) == b""
        scope["headers"].append((b"content-length", b"0"))
        assert await read_body(scope, must_not_be_called, 100) == b""

    parts: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return parts.pop(0)

    # a body announced by either header, or any HTTP/2 request (a body needs no Content-Length there)
    for scope in ({"http_version": "1.1", "headers": [(b"content-length", b"3")]},
                  {"http_version": "1.1", "headers": [(b"transfer-encoding", b"chunked")]},
                  {"http_version": "2", "headers": []}):
        parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]
        assert await read_body(scope, receive, 100) == b"abc"
