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

from wce.core import accounts, pages, pages_library, pages_render
from wce.core.errors import Forbidden, NotFound, ScriptError, Unauthenticated

from wce.responses import etag_matches

from .http import Call, Handler, Reply, Router, json_reply
from .render_cache import Entry
from .scripting import compile_in_child
from .tenant import Tenant

CACHE_CONTROL = {"public": "public, no-cache", "user": "private, no-store", "admin": "private, no-store"}


def _admin(call: Call) -> accounts.User:
    return call.require_admin()


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
    _admin(call)
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
    admin = _admin(call)
    t = call.tenant
    page = pages.create_page(t.conn, _spec(call), actor=admin.username, ip=call.client)
    t.bus.flush()
    return json_reply(_page_json(t, page), status=201)


async def get_page(call: Call) -> Reply:
    """One page's edit mode and render status."""
    _admin(call)
    t = call.tenant
    return json_reply(_page_json(t, pages.get_page(t.conn, _page_id(call))))


async def put_page(call: Call) -> Reply:
    """Replace a page's edit mode."""
    admin = _admin(call)
    t = call.tenant
    page_id = _page_id(call)
    pages.get_page(t.conn, page_id)  # 404 before any validation message
    page = pages.replace_page(t.conn, page_id, _spec(call), actor=admin.username, ip=call.client)
    t.bus.flush()
    return json_reply(_page_json(t, page))


async def delete_page(call: Call) -> Reply:
    """Delete a page; its path answers 404 at once."""
    admin = _admin(call)
    t = call.tenant
    pages.delete_page(t.conn, _page_id(call), actor=admin.username, ip=call.client)
    return Reply(204, [("cache-control", "no-store")])


# templates

async def list_templates(call: Call) -> Reply:
    """Every template."""
    _admin(call)
    return json_reply({"templates": [x.public() for x in pages_library.list_templates(call.tenant.conn)]})


async def get_template(call: Call) -> Reply:
    """One template."""
    _admin(call)
    return json_reply(pages_library.get_template(call.tenant.conn, call.params["name"]).public())


async def put_template(call: Call) -> Reply:
    """Create (201) or replace (200) a template: `{"source": MUSTACHE}`."""
    admin = _admin(call)
    t = call.tenant
    tpl, created = pages_library.put_template(t.conn, call.params["name"], call.json_object(),
                                              actor=admin.username, ip=call.client)
    return json_reply(tpl.public(), status=201 if created else 200)


async def delete_template(call: Call) -> Reply:
    """Delete a template."""
    admin = _admin(call)
    t = call.tenant
    pages_library.delete_template(t.conn, call.params["name"], actor=admin.username, ip=call.client)
    return Reply(204, [("cache-control", "no-store")])


# values

async def list_values(call: Call) -> Reply:
    """Every value."""
    _admin(call)
    return json_reply({"values": [v.public() for v in pages_library.list_values(call.tenant.conn)]})


async def get_value(call: Call) -> Reply:
    """One value."""
    _admin(call)
    return json_reply(pages_library.get_value(call.tenant.conn, call.params["key"]).public())


async def put_value(call: Call) -> Reply:
    """Create (201) or replace (200) a value: `{"value": ANY_JSON}`."""
    admin = _admin(call)
    t = call.tenant
    value, created = pages_library.put_value(t.conn, call.params["key"], call.json_object(),
                                             actor=admin.username, ip=call.client)
    return json_reply(value.public(), status=201 if created else 200)


async def delete_value(call: Call) -> Reply:
    """Delete a value."""
    admin = _admin(call)
    t = call.tenant
    pages_library.delete_value(t.conn, call.params["key"], actor=admin.username, ip=call.client)
    return Reply(204, [("cache-control", "no-store")])


# display

async def display(call: Call) -> Reply:
    """The pre-rendered output of the page at the request's path (rendered here only if stale)."""
    t = call.tenant
    page = t.render_cache.page_at(call.req.path)
    if page is None:
        raise NotFound("no such route")
    if page.access != "public":
        if call.user is None:
            raise Unauthenticated("sign in to see this page")
        if page.access == "admin" and call.user.role != "admin":
            raise Forbidden("this page is for admins")
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


def register_routes(router: Router) -> None:
    """Bind this module's handlers (display mode is the app's fallback for unclaimed GETs)."""
    router.add("GET", "/api/pages", list_pages)
    router.add("POST", "/api/pages", create_page)
    router.add("GET", "/api/pages/{id}", get_page)
    router.add("PUT", "/api/pages/{id}", put_page)
    router.add("DELETE", "/api/pages/{id}", delete_page)
    router.add("GET", "/api/templates", list_templates)
    router.add("GET", "/api/templates/{name}", get_template)
    router.add("PUT", "/api/templates/{name}", put_template)
    router.add("DELETE", "/api/templates/{name}", delete_template)
    router.add("GET", "/api/values", list_values)
    router.add("GET", "/api/values/{key}", get_value)
    router.add("PUT", "/api/values/{key}", put_value)
    router.add("DELETE", "/api/values/{key}", delete_value)
