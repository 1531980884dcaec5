"""The worker's route table (wce.worker.routes, wce.worker.app.ROUTES): dispatch, access, and that
the gateway logs each route under a class of its own."""

from __future__ import annotations

from typing import Any

import pytest

from wce.core.accounts import User
from wce.core.errors import Forbidden, MethodNotAllowed, NotFound, Unauthenticated
from wce.gateway import routes as gateway_routes
from wce.worker import app, pages_routes, scripts_routes
from wce.worker.http import Call, Reply
from wce.worker.routes import Route, Router, paths_for


async def nothing(call: Call) -> Reply:
    return Reply()


def router(*routes: Route) -> Router:
    return Router(routes)


def test_dispatch_order_and_answers() -> None:
    fn, root = Route("*", "/fn", nothing, "endpoint", "fn", mount=True), Route("GET", "/", nothing, "page", "page", mount=True)
    one = Route("GET", "/api/x/{id}", nothing, "admin", "one")
    put = Route("PUT", "/api/x/{id}", nothing, "admin", "put")
    exact = Route("POST", "/api/x/new", nothing, "admin", "new")
    r = router(fn, root, one, put, exact)
    assert r.match("DELETE", "/fn") == (fn, {}) and r.match("GET", "/fn/a/b") == (fn, {})
    assert r.match("GET", "/fnord")[0] is root  # not under /fn: no other route, a GET: a page
    assert r.match("GET", "/api/x/7") == (one, {"id": "7"}) and r.match("HEAD", "/api/x/7") == (one, {"id": "7"})
    assert r.match("POST", "/api/x/new") == (exact, {})  # exact paths before patterns
    with pytest.raises(MethodNotAllowed) as got:
        r.match("POST", "/api/x/7")
    assert got.value.allow == ["GET", "HEAD", "PUT"] and got.value.message == "POST is not allowed here; use GET, PUT"
    with pytest.raises(MethodNotAllowed):
        r.match("GET", "/api/x/new")  # a known path: 405, never the page fallback
    with pytest.raises(NotFound):
        r.match("POST", "/nowhere")  # the root mount answers GET and HEAD only
    with pytest.raises(ValueError, match="declared twice"):
        router(one, Route("GET", "/api/x/{id}", nothing, "public", "again"))


def call_as(role: str | None) -> Call:
    user = User(1, "u", role) if role else None
    return Call(None, None, user)  # type: ignore[arg-type]  # admit looks at the user only


@pytest.mark.parametrize("access,role,error", [
    ("admin", None, Unauthenticated), ("admin", "user", Forbidden), ("admin", "admin", None),
    ("user", None, Unauthenticated), ("user", "user", None), ("public", None, None), ("grant", None, None),
])
def test_admit_checks_user_and_admin_routes(access: Any, role: str | None, error: type[Exception] | None) -> None:
    route = Route("GET", "/api/x", nothing, access, "x")
    if error is None:
        route.admit(call_as(role))
    else:
        with pytest.raises(error):
            route.admit(call_as(role))


def test_the_table() -> None:
    routes = app.ROUTER.routes
    ops = [r.op or r.handler.__name__ for r in routes if r.per is None]
    assert len(ops) == len(set(ops)), "operationIds are unique"
    assert all(r.access != "admin" for r in routes if r.path.startswith("/auth/"))
    admin, anyone = paths_for(routes, admin=True), paths_for(routes, admin=False)
    assert "/api/users" in admin and "/api/users" not in anyone and "post" not in anyone["/api/tables"]
    mounts = {r.path: r.handler for r in routes if r.mount}
    assert mounts == {"/fn": scripts_routes.dispatch, "/": pages_routes.display}


def test_the_gateway_logs_each_route_under_its_first_segment() -> None:
    """A route outside the gateway's cenv table would be logged and counted as a page."""
    to_worker = {r.path[1:] for r in gateway_routes.CENV if r.via == gateway_routes.WORKER}
    for r in app.ROUTER.routes:
        first = r.path.split("/")[1]
        assert first in to_worker or (first == "" and r.access in ("public", "page")), r.path
