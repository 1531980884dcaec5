"""A worker's HTTP surface: its route table, and turning any outcome into exactly one response.

The table (`ROUTES`, each module's routes in turn; see wce.worker.routes) is the one list of what
a worker answers: the router, the access checks and `openapi.json` are all derived from it. A
WceError becomes the contract's error body; anything else is logged here with its traceback (to
the worker's stderr, never to the caller) and answered as a generic 500.
"""

from __future__ import annotations

import html
import sys
import traceback

from wce import proto
from wce.core import openapi, pages
from wce.core.errors import WceError
from wce.core.scripts import store

from . import api_routes, auth_routes, events_routes, export_routes, pages_routes, scripts_routes
from .http import Call, Reply, StreamReply, error_reply, json_reply
from .routes import ANY_OBJECT, Route, Router, paths_for
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


async def openapi_document(call: Call) -> Reply:
    """`GET /{cenv}/api/openapi.json`: the API as this caller may use it."""
    t = call.tenant
    actor = call.actor
    return json_reply(openapi.document(t.cenv_id, STATIC_PATHS[actor.is_admin], list(t.catalog.all().values()),
                                       t.access, actor, store.list_scripts(t.conn, "endpoint"),
                                       pages.list_pages(t.conn), root=call.root))


ROUTES: tuple[Route, ...] = (
    Route("GET", "/", pages_routes.display_or(home), "public", "the cenv's front page", op="home",
          media="text/html", answer={"type": "string"}),
    *auth_routes.ROUTES,
    *api_routes.ROUTES,
    *pages_routes.ROUTES,
    *events_routes.ROUTES,
    *scripts_routes.ROUTES,
    *export_routes.ROUTES,
    Route("GET", "/api/openapi.json", openapi_document, "public", "this document", op="openapi", answer=ANY_OBJECT),
)
ROUTER = Router(ROUTES)
# the paths of the routes documented by their own operation, for a caller who is not an admin and for one who is
STATIC_PATHS = {False: paths_for(ROUTES, admin=False), True: paths_for(ROUTES, admin=True)}


async def handle(tenant: Tenant, req: proto.Request) -> proto.Response | StreamReply:
    """Answer one request; never raises for a request's own failure.

    Whatever the handler committed is published on the bus before the answer goes out (pages
    re-rendered, listeners told), so a client that got its write acknowledged reads it back.
    A streamed answer is returned as is, for the server to send.
    """
    try:
        tenant.check_rate(req.client)
        route, params = ROUTER.match(req.method, req.path)
        call = Call(tenant, req, tenant.identify(req.identity), params)
        route.admit(call)
        reply = await route.handler(call)
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
