"""A worker's HTTP surface: the router, and turning any outcome into exactly one response.

A WceError becomes the contract's error body; anything else is logged here with its traceback
(to the worker's stderr, never to the caller) and answered as a generic 500.
"""

from __future__ import annotations

import html
import sys
import traceback

from wce import proto
from wce.core.errors import NotFound, WceError

from . import api_routes, auth_routes, events_routes, export_routes, pages_routes, scripts_routes
from .http import Call, Handler, Reply, Router, StreamReply, error_reply
from .tenant import Tenant


async def home(call: Call) -> Reply:
    """The cenv's front page until its owner publishes a page at `/`."""
    base = call.root
    who = html.escape(call.user.username) if call.user else "not signed in"
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>WCE cenv</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:3rem auto;padding:0 1rem}}
code,pre{{background:#f4f4f4;padding:.1rem .3rem}}</style></head>
<body><h1>This cenv is running</h1>
<p>It has no page at <code>/</code> yet. You are {who}.</p>
<p>Sign in through the API:</p>
<pre>curl -X POST {html.escape(base)}/auth/login -H 'content-type: application/json' \\
     -d '{{"username": "...", "password": "..."}}'</pre>
<p>Then send the token as <code>Authorization: Bearer TOKEN</code>.</p>
</body></html>
"""
    return Reply(200, [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")], body.encode())


def build_router() -> Router:
    """Every route a worker serves."""
    router = Router()
    router.add("GET", "/", pages_routes.display_or(home))
    auth_routes.register_routes(router)
    api_routes.register_routes(router)
    pages_routes.register_routes(router)
    events_routes.register_routes(router)
    scripts_routes.register_routes(router)
    export_routes.register_routes(router)
    return router


ROUTER = build_router()


def route(method: str, path: str) -> tuple[Handler, dict[str, str]]:
    """The handler of a request: a route, or for a GET no route claims, the page at that path."""
    if path == "/fn" or path.startswith("/fn/"):
        return scripts_routes.dispatch, {}
    try:
        return ROUTER.match(method, path)
    except NotFound:
        if method in ("GET", "HEAD"):
            return pages_routes.display, {}
        raise


async def handle(tenant: Tenant, req: proto.Request) -> proto.Response | StreamReply:
    """Answer one request; never raises for a request's own failure.

    Whatever the handler committed is published on the bus before the answer goes out (pages
    re-rendered, listeners told), so a client that got its write acknowledged reads it back.
    A streamed answer is returned as is, for the server to send.
    """
    try:
        tenant.check_rate(req.client)
        handler, params = route(req.method, req.path)
        call = Call(tenant, req, tenant.identify(req.identity), params)
        reply = await handler(call)
        if isinstance(reply, StreamReply):
            if req.method != "HEAD":
                return reply
            reply.stream.close()
            reply = Reply(reply.status, reply.headers)
        if req.method == "HEAD":
            reply.body = b""
    except WceError as exc:
        reply = error_reply(exc)
    except Exception:
        print(f"wce worker {tenant.cenv_id}: unhandled error on {req.method} {req.path}", file=sys.stderr)
        traceback.print_exc()
        reply = error_reply(WceError("internal error"))
    finally:
        tenant.bus.flush()
    return proto.Response(req.id, reply.status, reply.headers, reply.body)
