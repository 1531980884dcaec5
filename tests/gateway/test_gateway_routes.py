"""The gateway's route table (wce.gateway.routes) and the one error answer (wce.responses): where
each request lands, that the dispatcher answers every route the table lists with its methods, and
that every error code has its status."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest

from wce.config import ServerConfig
from wce.core import errors
from wce.gateway import routes
from wce.gateway.asgi import Gateway
from wce.gateway.origins import Origins
from wce.gateway.platform import create_platform_app
from wce.responses import STATUS, error_answer

C = "a" * 26


def where(path: str, host: str = "test", domain: str = "") -> tuple[str, str, str | None, str]:
    route, cenv, rest = routes.Routes(Origins(domain)).match({"path": path, "headers": [(b"host", host.encode())]})
    return route.name, route.via, cenv, rest


def test_where_requests_land_in_path_mode() -> None:
    assert where("/") == ("landing", routes.APP, None, "/")
    assert where("/new") == ("new", routes.APP, None, "/new")
    assert where("/import") == ("import", routes.IMPORT, None, "/import")
    assert where("/metrics") == ("metrics", routes.METRICS, None, "/metrics")
    assert where("/_/assets/app.js") == ("assets", routes.ASSETS, None, "/_/assets/app.js")
    assert where("/nothing") == ("other", routes.APP, None, "/nothing")
    assert where(f"/{C}x/") == ("other", routes.APP, None, f"/{C}x/")
    assert where(f"/{C}") == ("page", routes.SLASH, C, "")
    assert where(f"/{C}/") == ("page", routes.WORKER, C, "/")
    assert where(f"/{C}/about/us") == ("page", routes.WORKER, C, "/about/us")
    assert where(f"/{C}/api") == ("api", routes.WORKER, C, "/api")
    assert where(f"/{C}/api/tables") == ("api", routes.WORKER, C, "/api/tables")
    assert where(f"/{C}/apis") == ("page", routes.WORKER, C, "/apis")
    assert where(f"/{C}/_") == ("_", routes.EDITOR, C, "/_")
    assert where(f"/{C}/_/assets/app.js") == ("_", routes.EDITOR, C, "/_/assets/app.js")
    assert where(f"/{C}/_x") == ("page", routes.WORKER, C, "/_x")


def test_where_requests_land_in_subdomain_mode() -> None:
    assert where("/new", "d.test", "d.test") == ("new", routes.APP, None, "/new")
    assert where(f"/{C}/api/x", "d.test", "d.test") == ("other", routes.MOVED, None, f"/{C}/api/x")
    assert where("/api/x", f"{C}.d.test:8080", "d.test") == ("api", routes.WORKER, C, "/api/x")
    assert where("/new", f"{C}.d.test", "d.test") == ("page", routes.WORKER, C, "/new")
    assert where("/_/assets/a.js", f"{C}.d.test", "d.test") == ("_", routes.EDITOR, C, "/_/assets/a.js")
    assert where("/_/assets/a.js", "other.test", "d.test") == ("assets", routes.ASSETS, None, "/_/assets/a.js")


def test_allow_lists_take_head_with_get() -> None:
    assert routes.by_name("new").allow == ("GET", "HEAD", "POST")
    assert routes.by_name("import").allow == ("POST",)
    with pytest.raises(errors.MethodNotAllowed) as caught:
        routes.by_name("metrics").check("POST")
    assert caught.value.allow == ["GET", "HEAD"]


class Supervisor:
    zygote = None

    def live(self, cenv: str) -> Any:
        return None

    def exists(self, cenv: str) -> bool:
        return True

    async def get(self, cenv: str) -> Any:
        raise errors.NotFound("no such cenv")

    def statistics(self) -> Any:
        class S:
            live = 0
            events: dict[str, int] = {}
        return S()


async def test_every_route_refuses_other_methods_with_its_allow_list() -> None:
    config = ServerConfig(metrics_token="t")
    app = Gateway(config, Supervisor(), create_platform_app(config, Supervisor()))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for route, path in [*((r, r.path) for r in routes.PLATFORM), (routes.CENV[0], f"/{C}/_/")]:
            r = await client.delete(path, headers={"authorization": "Bearer t"})
            assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", route
            allowed = set(r.headers["allow"].split(", "))
            if route.via == routes.APP:  # Quart answers OPTIONS on its routes itself
                allowed.discard("OPTIONS")
            assert allowed == set(route.allow), route


def test_every_error_code_has_one_status() -> None:
    classes = {cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.WceError)}
    assert classes == set(STATUS)
    assert len({cls.code for cls in STATUS}) == len(STATUS)


def test_any_error_is_answered() -> None:
    status, headers, body = error_answer(KeyError("/secret/path"))
    assert status == 500 and b"secret" not in body and body == b'{"error":{"code":"internal","message":"internal error"}}'
    status, headers, _ = error_answer(errors.RateLimited("slow down", retry_after=7), close=True)
    assert status == 429 and ("retry-after", "7") in headers and ("connection", "close") in headers
    status, headers, _ = error_answer(errors.MethodNotAllowed("no", ["GET", "HEAD"]))
    assert status == 405 and ("allow", "GET, HEAD") in headers and ("connection", "close") not in headers
