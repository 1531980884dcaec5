"""Platform routes (no cenv in the path): landing page, cenv creation, health. A Quart-Trio app.

There is no platform database: creating a cenv writes one new file, through the fork server, and
nothing else remembers it.
"""

from __future__ import annotations

import html
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from wce.config import ServerConfig
from wce.core.errors import BadRequest, Forbidden, RateLimited, WceError
from wce.core.ids import new_id
from wce.core.throttle import SlidingWindow
from wce.responses import error_parts, json_bytes

from .supervisor import Supervisor

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0 .2rem}}input{{font:inherit;padding:.3rem;width:100%;box-sizing:border-box}}
button{{font:inherit;margin-top:1rem;padding:.4rem 1.2rem}}code{{background:#f4f4f4;padding:.1rem .3rem}}
.err{{color:#a00}}</style></head><body>{body}</body></html>
"""

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _html(title: str, body: str, status: int = 200) -> Response:
    return Response(PAGE.format(title=html.escape(title), body=body), status=status,
                    content_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


def _error(exc: WceError) -> Response:
    status, headers, body = error_parts(exc.code, exc.message, getattr(exc, "retry_after", None))
    return Response(body, status=status, headers=dict(headers))


NEW_FORM = """<h1>Create a cenv</h1>
<p>A cenv is one SQLite file holding a whole application: its users, data, pages and scripts.
You will be its first administrator.</p>
{error}
<form method="post" action="/new">
<label for="username">Admin username</label><input id="username" name="username" required
 autocomplete="username" maxlength="64" value="{username}">
<label for="password">Password (at least 8 characters)</label><input id="password" name="password"
 type="password" required minlength="8" autocomplete="new-password">
<button type="submit">Create</button></form>"""


def create_platform_app(config: ServerConfig, supervisor: Supervisor) -> QuartTrio:
    """The Quart app of the platform routes."""
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body
    new_limiter = SlidingWindow(config.new_per_hour, 3600.0)

    @app.get("/")
    async def landing() -> Response:
        link = '<p><a href="/new">Create a cenv</a></p>' if config.public_new else "<p>Cenv creation is closed on this server.</p>"
        return _html("WCE", "<h1>WCE: the Web Compute Environment</h1><p>Small web applications, each one SQLite file.</p>" + link)

    @app.get("/new")
    async def new_form() -> Response:
        if not config.public_new:
            return _html("WCE", "<h1>Cenv creation is closed on this server</h1>", 403)
        return _html("Create a cenv", NEW_FORM.format(error="", username=""))

    @app.post("/new")
    async def new_create() -> Response:
        is_json = request.mimetype == "application/json"
        fields: dict[str, Any] = {}
        try:
            if not config.public_new:
                raise Forbidden("public cenv creation is turned off on this server")
            client = request.remote_addr or ""
            retry = new_limiter.retry_after(client)
            if retry:
                raise RateLimited("too many cenvs created from this address; try again later", retry_after=retry)
            if is_json:
                data = await request.get_json(silent=True)
                if not isinstance(data, dict):
                    raise BadRequest("body must be a JSON object with username and password")
                fields = data
            else:
                fields = dict(await request.form)
            username, password = fields.get("username"), fields.get("password")
            if not isinstance(username, str) or not isinstance(password, str):
                raise BadRequest("username and password are required")
            new_limiter.hit(client)
            cenv = new_id()
            await supervisor.forkserver.create(cenv, username, password, client)
        except WceError as exc:
            if is_json:
                return _error(exc)
            msg = f'<p class="err">{html.escape(exc.message)}</p>'
            name = html.escape(str(fields.get("username", ""))) if isinstance(fields.get("username"), str) else ""
            status, _, _ = error_parts(exc.code, exc.message)
            return _html("Create a cenv", NEW_FORM.format(error=msg, username=name), status)
        url = f"{request.scheme}://{request.host}/{cenv}/"
        if is_json:
            return Response(json_bytes({"cenv": cenv, "url": url}), status=201,
                            content_type="application/json", headers={"cache-control": "no-store", "location": url})
        safe = html.escape(url)
        return _html("Your cenv", f"""<h1>Your cenv is ready</h1>
<p>Bookmark this address: it is the only way back to your cenv.</p>
<p><code>{safe}</code></p>
<p><a href="/{cenv}/">Open it</a></p>""", 201)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(json_bytes({"status": "ok", "workers": supervisor.statistics().live}),
                        content_type="application/json", headers={"cache-control": "no-store"})

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.code or 500, "internal")
        message = {404: "no such page", 405: "method not allowed here", 413: "request body too large"}.get(
            exc.code or 500, "bad request")
        status, headers, body = error_parts(code, message)
        return Response(body, status=exc.code or status, headers=dict(headers))

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return _error(WceError("internal error"))

    return app
