"""Pages, templates and values: the admin edit mode under `/{cenv}/api/`, and the display mode.

Edit mode (admins only: 401 anonymous, 403 anyone else): `pages`, `pages/{id}`, `templates`,
`templates/{name}`, `values`, `values/{key}`. A save commits (with its audit row), then flushes the
bus so the render cache re-renders what the change affects before the answer goes out: the page
JSON carries the fresh `render_error`, and the next display request already sees the new output.

Display mode: `GET /{cenv}/{path}` for any GET no other route claims. It looks the output up in
the render cache, checks the page's access level, and answers with an ETag. It renders only a
page that is stale after a crash or an import (wce.worker.render_cache), once, in this request's
budget, and then says `x-wce-cache: miss`:
`If-None-Match` gets 304. Public pages say `Cache-Control: public, no-cache` (caches may keep them
but must revalidate, since any commit can change them); user and admin pages `private, no-store`.
"""

from __future__ import annotations

from wce.core import pages, pages_library, pages_render
from wce.core.errors import Conflict, Invalid, NotFound, ScriptError

from wce.responses import etag_matches

from .http import Call, Handler, Reply, json_reply, no_content
from .render_cache import Entry
from .routes import Route, Schema, listing
from .scripting import compile_in_child
from .tenant import Tenant

CACHE_CONTROL = {"public": "public, no-cache", "user": "private, no-store", "admin": "private, no-store"}


def _page_json(t: Tenant, page: pages.Page) -> dict[str, object]:
    return {**page.public(), **t.render_cache.status(page.id)}


def _page_id(call: Call) -> int:
    raw = call.params["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("no such page")
    return int(raw)


# pages

async def list_pages(call: Call) -> Reply:
    """Every page with its render status."""
    t = call.tenant
    return json_reply({"pages": [_page_json(t, p) for p in pages.list_pages(t.conn)]})


def _spec(call: Call) -> pages.PageSpec:
    t = call.tenant
    spec = pages.parse_page(call.json_object())
    pages_render.check_queries(t.guard, t.access, spec)
    if spec.context is not None:
        compile_in_child(spec.context, "context")
    return spec


async def create_page(call: Call) -> Reply:
    """Create a page; it is rendered before the answer (see `render_error`). (Other writes here
    are published by the flush after every request, wce.worker.app.handle.)"""
    t = call.tenant
    page = pages.create_page(t.conn, _spec(call), actor=call.username, ip=call.client)
    t.bus.flush()
    return json_reply(_page_json(t, page), status=201)


async def get_page(call: Call) -> Reply:
    """One page's edit mode and render status."""
    t = call.tenant
    return json_reply(_page_json(t, pages.get_page(t.conn, _page_id(call))))


async def put_page(call: Call) -> Reply:
    """Replace a page's edit mode."""
    t = call.tenant
    page_id = _page_id(call)
    pages.get_page(t.conn, page_id)  # 404 before any validation message
    page = pages.replace_page(t.conn, page_id, _spec(call), actor=call.username, ip=call.client)
    t.bus.flush()
    return json_reply(_page_json(t, page))


async def delete_page(call: Call) -> Reply:
    """Delete a page; its path answers 404 at once."""
    t = call.tenant
    pages.delete_page(t.conn, _page_id(call), actor=call.username, ip=call.client)
    return no_content()


# templates and values

def _shelf_routes(shelf: pages_library.Shelf, content: Schema) -> tuple[Route, ...]:
    """The four routes of a shelf: `GET /api/{noun}s`, `GET/PUT/DELETE /api/{noun}s/{key}`, the
    key named as its column (`{name}`, `{key}`); PUT takes `{column: content}` and creates (201)
    or replaces (200) an item."""
    noun, key, column = shelf.noun, shelf.key, shelf.column
    path, plural = f"/api/{noun}s", f"{noun}s"
    one = f"{path}/{{{key}}}"
    item = {"type": "object", "required": [key, column, "updated_at"],
            "properties": {key: {"type": "string"}, column: content, "updated_at": {"type": "number"}}}
    body = {"type": "object", "required": [column], "properties": {column: content}}

    async def list_all(call: Call) -> Reply:
        return json_reply({plural: [shelf.public(x) for x in shelf.items(call.tenant.conn)]})

    async def get(call: Call) -> Reply:
        return json_reply(shelf.public(shelf.get(call.tenant.conn, call.params[key])))

    async def put(call: Call) -> Reply:
        got, created = shelf.put(call.tenant.conn, call.params[key], call.json_object(),
                                 actor=call.username, ip=call.client)
        return json_reply(shelf.public(got), status=201 if created else 200)

    async def delete(call: Call) -> Reply:
        shelf.delete(call.tenant.conn, call.params[key], actor=call.username, ip=call.client)
        return no_content()

    return (
        Route("GET", path, list_all, "admin", f"every {noun}", op=f"list_{plural}", answer=listing(plural, item)),
        Route("GET", one, get, "admin", f"one {noun}", op=f"get_{noun}", answer=item),
        Route("PUT", one, put, "admin", f"create or replace a {noun}", op=f"put_{noun}", body=body, ok=(200, 201),
              answer=item, errors=(Invalid,)),
        Route("DELETE", one, delete, "admin", f"delete a {noun}", op=f"delete_{noun}", ok=(204,)),
    )


# display

async def display(call: Call) -> Reply:
    """The pre-rendered output of the page at the request's path (rendered here only if stale)."""
    t = call.tenant
    page = t.render_cache.page_at(call.req.path)
    if page is None:
        raise NotFound("no such route")
    call.require(page.access, "sign in to see this page", "this page is for admins")
    cache = "miss" if page.id in t.render_cache.stale else "hit"
    entry = t.render_cache.entry(page)
    if entry is None:
        raise ScriptError("this page could not be rendered; its owner can see why in the editor")
    if etag_matches(call.header("if-none-match"), entry.etag):
        return Reply(304, not_modified_headers(entry, page.access, cache))
    return Reply(200, page_headers(entry, page.access, cache), entry.body)


def not_modified_headers(entry: Entry, access: str, cache: str = "hit") -> list[tuple[str, str]]:
    """The headers of a 304 for a page (also pushed to the gateway, which answers public pages)."""
    # x-wce-cache: counted by the gateway's metrics; a miss only when a stale page was rendered
    return [("etag", entry.etag), ("cache-control", CACHE_CONTROL[access]), ("x-wce-cache", cache)]


def page_headers(entry: Entry, access: str, cache: str = "hit") -> list[tuple[str, str]]:
    """The headers of a page's 200."""
    return [*not_modified_headers(entry, access, cache), ("content-type", entry.content_type),
            ("x-content-type-options", "nosniff")]


def display_or(fallback: Handler) -> Handler:
    """A handler that shows the page at the path if there is one, else calls fallback."""

    async def handler(call: Call) -> Reply:
        if call.tenant.render_cache.page_at(call.req.path) is not None:
            return await display(call)
        return await fallback(call)  # type: ignore[return-value]

    return handler


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


PAGE_FIELDS: Schema = {
    "path": {"type": "string"}, "template": {"type": "string"},
    "queries": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    "context": _nullable("string"), "access": {"type": "string", "enum": list(pages.ACCESS_LEVELS)},
    "content_type": {"type": "string"}}
PAGE_BODY: Schema = {"type": "object", "required": ["path", "template"], "properties": PAGE_FIELDS}
PAGE: Schema = {"type": "object", "required": [*PAGE_FIELDS, "id", "updated_at", "rendered_at", "etag", "render_error"],
                "properties": {**PAGE_FIELDS, "queries": {"type": "object", "additionalProperties": {"type": "string"}},
                               "id": {"type": "integer"}, "updated_at": {"type": "number"},
                               "rendered_at": _nullable("number"), "etag": _nullable("string"),
                               "render_error": _nullable("string"), "render_error_at": _nullable("number")}}
PAGE_ERRORS = (Conflict, Invalid)  # the path taken; the template, a query or the context refused

ROUTES = (
    Route("GET", "/api/pages", list_pages, "admin", "every page with its render status", answer=listing("pages", PAGE)),
    Route("POST", "/api/pages", create_page, "admin", "create a page", body=PAGE_BODY, ok=(201,), answer=PAGE,
          errors=PAGE_ERRORS),
    Route("GET", "/api/pages/{id}", get_page, "admin", "one page with its render status", answer=PAGE),
    Route("PUT", "/api/pages/{id}", put_page, "admin", "replace a page", body=PAGE_BODY, answer=PAGE,
          errors=PAGE_ERRORS),
    Route("DELETE", "/api/pages/{id}", delete_page, "admin", "delete a page", ok=(204,)),
    *_shelf_routes(pages_library.TEMPLATES, {"type": "string"}),
    *_shelf_routes(pages_library.VALUES, {}),
    Route("GET", "/", display, "page", "the page at a path", per="pages", mount=True),
)
