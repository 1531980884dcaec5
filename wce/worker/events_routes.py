"""`GET /{cenv}/api/events?tables=a,b`: committed changes as Server-Sent Events.

The route checks the request (tables that exist, each one the caller may select) and opens a
stream on the worker's EventHub (wce.worker.events_hub, where the streams' rules are described);
the server sends it as StreamStart, StreamChunk*, StreamEnd.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from wce.core.errors import BadRequest, Forbidden, NotFound, Unauthenticated, Unavailable

from .http import Call, StreamReply
from .routes import Route

MAX_TABLES = 50
HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-store"),
           ("x-accel-buffering", "no")]


async def events(call: Call) -> StreamReply:
    """Open a stream of the committed changes of the tables asked for."""
    t = call.tenant
    actor = call.actor
    names: list[str] = []
    for key, value in parse_qsl(call.req.query, keep_blank_values=True):
        if key == "tables":
            names += [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise BadRequest("say which tables to follow: ?tables=a,b")
    if len(set(names)) > MAX_TABLES:
        raise BadRequest(f"at most {MAX_TABLES} tables per stream")
    tables = frozenset(t.catalog.get(n).name for n in names)  # 404 for unknown and _wce_ tables
    for name in sorted(tables):
        if not t.access.allowed(actor.role, name, "select"):
            if actor.role == "anon":
                raise Unauthenticated(f"sign in to follow {name}")
            raise Forbidden(f"no select permission on {name}")
    session = None
    if call.user is not None and call.req.identity is not None:
        session = (call.user.id, str(call.req.identity.get("jti")))
    return StreamReply(200, list(HEADERS), t.events.open(actor, session, tables))


ROUTES = (
    Route("GET", "/api/events", events, "grant", "committed changes of tables, as Server-Sent Events",
          query=({"name": "tables", "in": "query", "required": True, "schema": {"type": "string"},
                  "description": "the tables to follow, comma-separated"},),
          media="text/event-stream", answer={"type": "string"},
          errors=(BadRequest, Unauthenticated, Forbidden, NotFound, Unavailable)),
)
