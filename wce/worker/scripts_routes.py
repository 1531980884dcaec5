"""Starlark endpoints and triggers: `/{cenv}/api/endpoints`, `/api/triggers`, `/api/logs`, and
the calls themselves at `/{cenv}/fn/...`."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl

from wce.core.errors import BadRequest, Conflict, Invalid, NotFound, ScriptError, Timeout, Unavailable, WceError
from wce.core.rows import parse_int
from wce.core.scripts import store

from .http import Call, Reply, error_reply, json_reply, method_not_allowed, no_content
from .routes import ANY_OBJECT, Route, listing, paging
from .scripting import ScriptHost, compile_in_child, endpoint_reply, execute, public_error


def _id(call: Call) -> int:
    return parse_int(call.params["id"], NotFound("no such script"))


def _crud(kind: str) -> tuple[Route, ...]:
    """The five routes of a kind of script: `GET/POST /api/{kind}s`, `GET/PUT/DELETE /api/{kind}s/{id}`."""
    async def list_all(call: Call) -> Reply:
        return json_reply({f"{kind}s": store.list_scripts(call.tenant.conn, kind)})

    async def create(call: Call) -> Reply:
        saved = store.save(call.tenant.conn, kind, call.json(), None, actor=call.username, ip=call.client,
                           compile_check=compile_in_child)
        call.tenant.scripts.invalidate()
        return json_reply(saved, status=201)

    async def get(call: Call) -> Reply:
        return json_reply(store.get_script(call.tenant.conn, kind, _id(call)))

    async def put(call: Call) -> Reply:
        saved = store.save(call.tenant.conn, kind, call.json(), _id(call), actor=call.username, ip=call.client,
                           compile_check=compile_in_child)
        call.tenant.scripts.invalidate()
        return json_reply(saved)

    async def delete(call: Call) -> Reply:
        store.delete(call.tenant.conn, kind, _id(call), actor=call.username, ip=call.client)
        call.tenant.scripts.invalidate()
        return no_content()

    path, one, saving = f"/api/{kind}s", f"/api/{kind}s/{{id}}", (Conflict, Invalid)
    return (
        Route("GET", path, list_all, "admin", f"{kind}s", op=f"list_{kind}s", answer=listing(f"{kind}s")),
        Route("POST", path, create, "admin", f"add an {kind}" if kind[0] in "aeiou" else f"add a {kind}",
              op=f"create_{kind}", body=ANY_OBJECT, ok=(201,), answer=ANY_OBJECT, errors=saving),
        Route("GET", one, get, "admin", f"one {kind}", op=f"get_{kind}", answer=ANY_OBJECT),
        Route("PUT", one, put, "admin", f"replace a {kind}", op=f"put_{kind}", body=ANY_OBJECT, answer=ANY_OBJECT,
              errors=saving),
        Route("DELETE", one, delete, "admin", f"remove a {kind}", op=f"delete_{kind}", ok=(204,)),
    )


def _raw_request(call: Call, method: str, path: str, params: dict[str, str], query: str,
                 headers: dict[str, str], body: bytes) -> dict[str, Any]:
    text = body.decode("utf-8", "replace")
    parsed = None
    if body:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    user = call.user
    return {
        "method": method, "path": path, "params": params,
        "query": dict(parse_qsl(query, keep_blank_values=True)), "headers": headers, "body": text,
        "json": parsed, "user": {"id": user.id, "username": user.username, "role": user.role} if user else None,
    }


async def dispatch(call: Call) -> Reply:
    """`ANY /{cenv}/fn/{path}`: route to an endpoint and call its handle_request(ctx)."""
    t = call.tenant
    path = call.req.path[len("/fn"):] or "/"
    method = "GET" if call.req.method == "HEAD" else call.req.method
    found, params, allowed = t.scripts.endpoint(method, path)
    if found is None:
        if allowed:
            raise method_not_allowed(call.req.method, allowed)
        raise NotFound("no endpoint at this path")
    info, compiled = found
    sid = info["id"]
    call.require(info["access"], "sign in to call this endpoint")
    actor = call.actor
    host = ScriptHost(t, actor, call.client, f"endpoint:{sid}")
    raw = _raw_request(call, call.req.method, path, params, call.req.query, dict(call.req.headers), call.req.body)
    try:
        value, _ = execute(t, compiled, raw, host)
        status, headers, body = endpoint_reply(value)
    except WceError as exc:
        _log(t, sid, host)
        return error_reply(public_error(exc, actor.is_admin))
    _log(t, sid, host)
    return Reply(status, [*headers, ("cache-control", "no-store")], body)


def _log(tenant: Any, sid: int, host: ScriptHost) -> None:
    if host.lines:
        store.log_lines(tenant.conn, sid, "endpoint", host.lines)


async def test_endpoint(call: Call) -> Reply:
    """Run an endpoint on a sample request as the calling admin; its writes are rolled back."""
    t = call.tenant
    sid = _id(call)
    store.get_script(t.conn, "endpoint", sid)
    info, compiled = t.scripts.compiled(sid)
    sample = call.json_object() if call.req.body else {}
    if set(sample) - {"method", "path", "params", "query", "headers", "body", "json"}:
        raise BadRequest("a sample request may have method, path, params, query, headers, body, json")
    body = sample.get("body")
    if "json" in sample:
        body = json.dumps(sample["json"])
    if body is not None and not isinstance(body, str):
        raise BadRequest("body must be a string (or give json)")
    headers = sample.get("headers") or {}
    params = sample.get("params") or {}
    query = sample.get("query") or {}
    if not all(isinstance(d, dict) for d in (headers, params, query)):
        raise BadRequest("headers, params and query must be objects")
    raw = _raw_request(call, str(sample.get("method", info["method"])), str(sample.get("path", info["path"])),
                       {str(k): str(v) for k, v in params.items()},
                       "&".join(f"{k}={v}" for k, v in query.items()),
                       {str(k).lower(): str(v) for k, v in headers.items()}, (body or "").encode())
    host = ScriptHost(t, call.actor, call.client, f"endpoint:{sid}")
    started = time.perf_counter()
    try:
        value, cpu_ms = execute(t, compiled, raw, host, commit=False)
        status, resp_headers, resp_body = endpoint_reply(value)
        text = resp_body.decode("utf-8", "replace")
        result: dict[str, Any] = {"status": status, "headers": dict(resp_headers), "body": text}
        error = None
    except WceError as exc:
        shown = public_error(exc, True)
        result = {"status": error_reply(shown).status, "headers": {}, "body": ""}
        error = {"code": shown.code, "message": shown.message,
                 "line": getattr(shown, "line", None), "column": getattr(shown, "column", None)}
    duration = (time.perf_counter() - started) * 1000
    return json_reply({"response": result, "error": error, "printed": host.lines,
                       "duration_ms": round(duration, 2), "rolled_back": True})


async def read_logs(call: Call) -> Reply:
    """What scripts printed, newest first."""
    limit, before = call.paging(1000, default=100)
    return json_reply({"lines": store.read_log(call.tenant.conn, limit, before)})


SAMPLE = {"type": "object", "additionalProperties": False,
          "properties": {k: {} for k in ("method", "path", "params", "query", "headers", "body", "json")}}
TRIED = {"type": "object", "required": ["response", "error", "printed", "duration_ms", "rolled_back"]}

ROUTES = (
    *_crud("endpoint"),
    *_crud("trigger"),
    Route("POST", "/api/endpoints/{id}/test", test_endpoint, "admin", "run on a sample request (rolled back)",
          body=SAMPLE, body_required=False, answer=TRIED),
    Route("GET", "/api/logs", read_logs, "admin", "what scripts printed, newest first", query=paging(1000),
          answer=listing("lines")),
    Route("*", "/fn", dispatch, "endpoint", "a Starlark endpoint", per="endpoints", mount=True,
          errors=(ScriptError, Timeout, Unavailable)),
)
