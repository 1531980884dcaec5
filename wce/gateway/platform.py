"""Platform routes (no cenv in the path): landing page, cenv creation, health. A Quart-Trio app.

There is no platform database: creating a cenv writes one new file, through the fork server, and
nothing else remembers it.

The routes and their methods are those of the gateway's route table (wce.gateway.routes). Two
of them are plain ASGI handlers that the dispatcher (wce.gateway.asgi) calls instead of Quart:
`POST /import`, whose body is streamed to a temporary file under its own, larger limit, and
`GET /metrics`, which is compared against an operator token and must stay cheap. Every error is
answered by wce.responses.error_answer, as everywhere else.
"""

from __future__ import annotations

import hmac
import html
import json
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import MethodNotAllowed as HTTPMethodNotAllowed
from werkzeug.http import parse_options_header
from werkzeug.sansio import multipart

from wce.config import ServerConfig
from wce.core.errors import (
    BadRequest, Forbidden, MethodNotAllowed, NotFound, RateLimited, TooLarge, Unauthenticated, WceError,
)
from wce.core.ids import new_id
from wce.responses import error_answer, json_bytes, status_for

from . import routes
from .answers import body_unread, send_error
from .metrics import Metrics, MetricsFiles
from .origins import Origins
from .supervisor import Supervisor

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

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


def _error(exc: BaseException) -> Response:
    status, headers, body = error_answer(exc)
    return Response(body, status=status, headers=dict(headers))


def _from_werkzeug(exc: HTTPException) -> WceError:
    """Quart's own refusals (no route for a path or method, a form it cannot parse) as our errors."""
    if isinstance(exc, HTTPMethodNotAllowed):
        return MethodNotAllowed("method not allowed here", list(exc.valid_methods or ()))
    if exc.code == 404:
        return NotFound("no such page")
    if exc.code == 413:
        return TooLarge("request body too large")
    if exc.code is not None and exc.code < 500:
        return BadRequest("bad request")
    return WceError()


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
    origins = Origins(config.cenv_domain)

    async def landing() -> Response:
        link = '<p><a href="/new">Create a cenv</a></p>' if config.public_new else "<p>Cenv creation is closed on this server.</p>"
        return _html("WCE", "<h1>WCE: the Web Compute Environment</h1><p>Small web applications, each one SQLite file.</p>" + link)

    async def new_form() -> Response:
        if not config.public_new:
            return _html("WCE", "<h1>Cenv creation is closed on this server</h1>", 403)
        return _html("Create a cenv", NEW_FORM.format(error="", username=""))

    async def new_create() -> Response:
        is_json = request.mimetype == "application/json"
        fields: dict[str, Any] = {}
        try:
            if not config.public_new:
                raise Forbidden("public cenv creation is turned off on this server")
            client = request.remote_addr or ""
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
            await supervisor.zygote.admit("new", client)
            cenv = new_id()
            await supervisor.zygote.create(cenv, username, password, client)
        except WceError as exc:
            if is_json:
                return _error(exc)
            msg = f'<p class="err">{html.escape(exc.message)}</p>'
            name = html.escape(str(fields.get("username", ""))) if isinstance(fields.get("username"), str) else ""
            return _html("Create a cenv", NEW_FORM.format(error=msg, username=name), status_for(exc.code))
        url = origins.cenv_url(request.scheme, request.host, cenv)
        if is_json:
            return Response(json_bytes({"cenv": cenv, "url": url}), status=201,
                            content_type="application/json", headers={"cache-control": "no-store", "location": url})
        safe = html.escape(url)
        return _html("Your cenv", f"""<h1>Your cenv is ready</h1>
<p>Bookmark this address: it is the only way back to your cenv.</p>
<p><code>{safe}</code></p>
<p><a href="{safe}_/">Open the editor</a> (sign in with the account you just chose) or <a href="{safe}">the cenv itself</a></p>""", 201)

    async def healthz() -> Response:
        try:  # the worker protections active on this host, as the fork server found them at start
            sandbox = json.loads(config.sandbox_status_path.read_bytes())
        except (OSError, ValueError):
            sandbox = "unknown"
        return Response(json_bytes({"status": "ok", "workers": supervisor.statistics().live, "sandbox": sandbox}),
                        content_type="application/json", headers={"cache-control": "no-store"})

    views = {("landing", "GET"): landing, ("new", "GET"): new_form, ("new", "POST"): new_create,
             ("healthz", "GET"): healthz}
    for route in routes.PLATFORM:
        if route.via == routes.APP:
            for method in route.methods:
                app.add_url_rule(route.path, f"{route.name}_{method.lower()}", views.pop((route.name, method)),
                                 methods=[method])
    assert not views, f"views of no route: {sorted(views)}"

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _error(_from_werkzeug(exc))

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return _error(exc)

    return app


# POST /import and GET /metrics: plain ASGI, called by the dispatcher

IMPORT_FIELD_MAX = 4096  # username and password fields
IMPORT_FIELDS = ("username", "password")


async def _send_json(send: Send, status: int, value: Any, headers: list[tuple[str, str]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
                            *((k.encode(), v.encode()) for k, v in headers)]})
    await send({"type": "http.response.body", "body": json_bytes(value)})


class _ClientGone(Exception):
    """The uploader went away mid-body."""


class ImportRoute:
    """`POST /import`: multipart/form-data with `file` (a cenv SQLite file), `username`, `password`.

    The body is streamed through a multipart decoder straight into an unlinked temporary file, under
    `max_import_mb` (413 as soon as it is known to be over, connection closed). The fork server gets
    the open file and checks and installs it in a forked child (wce.core.backup.import_file): the
    gateway itself never opens SQLite. 201 `{"cenv", "url"}`; 422 for a file that is not a sound
    cenv; 403 when the credentials are not those of an enabled admin of the file.
    """

    route = routes.by_name("import")

    def __init__(self, config: ServerConfig, supervisor: Supervisor, metrics: Metrics) -> None:
        self.config = config
        self.supervisor = supervisor
        self.metrics = metrics
        self.limit = config.max_import_mb << 20
        self.origins = Origins(config.cenv_domain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            cenv, url = await self._handle(scope, receive)
        except _ClientGone:
            return
        except WceError as exc:
            if not isinstance(exc, (MethodNotAllowed, RateLimited)):
                self.metrics.imports["refused"] += 1
            await send_error(send, exc, unread=True)  # the body may be unread at any point
            return
        self.metrics.imports["ok"] += 1
        await _send_json(send, 201, {"cenv": cenv, "url": url}, [("location", url)])

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[str, str]:
        self.route.check(scope["method"])
        if not self.config.public_new:
            raise Forbidden("importing cenvs is turned off on this server")
        client = (scope.get("client") or ("",))[0]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            raise TooLarge(f"the upload is over {self.config.max_import_mb} MiB")
        mimetype, options = parse_options_header(headers.get("content-type", ""))
        boundary = options.get("boundary", "")
        if mimetype != "multipart/form-data" or not boundary:
            raise BadRequest("send multipart/form-data with the fields file, username and password")
        await self.supervisor.zygote.admit("import", client)
        self.supervisor.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=self.supervisor.run_dir) as upload:
            fields = await self._receive_form(receive, boundary.encode("latin-1"), upload)
            username, password = fields.get("username"), fields.get("password")
            if not isinstance(username, str) or not isinstance(password, str) or fields.get("file") is None:
                raise BadRequest("the fields file, username and password are required")
            upload.flush()
            cenv = new_id()
            await self.supervisor.zygote.import_file(cenv, upload.fileno(), username, password, client)
        return cenv, self.origins.cenv_url(scope.get("scheme", "http"), headers.get("host", "localhost"), cenv)

    async def _receive_form(self, receive: Receive, boundary: bytes, upload: Any) -> dict[str, str | None]:
        """Feed the body to the decoder; file bytes go to `upload`, the small fields to a dict."""
        decoder = multipart.MultipartDecoder(boundary, max_form_memory_size=1 << 20, max_parts=8)
        fields: dict[str, str | None] = {}
        current: str | None = None
        value = bytearray()
        size = 0
        done = False
        while not done:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _ClientGone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise TooLarge(f"the upload is over {self.config.max_import_mb} MiB")
            more = msg.get("more_body", False)
            try:
                decoder.receive_data(chunk)
                if not more:
                    decoder.receive_data(None)
                while True:
                    event = decoder.next_event()
                    if isinstance(event, multipart.NeedData):
                        break
                    if isinstance(event, multipart.File):
                        current = "file" if event.name == "file" else None
                        if current and "file" in fields:
                            raise BadRequest("send one file")
                        if current:
                            fields["file"] = None
                    elif isinstance(event, multipart.Field):
                        current = event.name if event.name in IMPORT_FIELDS else None
                        value.clear()
                    elif isinstance(event, multipart.Data):
                        if current == "file":
                            upload.write(event.data)  # into the page cache: bounded by one received chunk
                            if not event.more_data:
                                fields["file"] = ""
                        elif current is not None:
                            value += event.data
                            if len(value) > IMPORT_FIELD_MAX:
                                raise BadRequest(f"the field {current} is too long")
                            if not event.more_data:
                                fields[current] = value.decode("utf-8", "replace")
                    elif isinstance(event, multipart.Epilogue):
                        done = True
                        break
            except RequestEntityTooLarge:
                raise TooLarge("a form field is too large") from None
            except ValueError:
                raise BadRequest("malformed multipart/form-data body") from None
            if not more and not done:
                raise BadRequest("malformed multipart/form-data body")
        return fields


class MetricsRoute:
    """`GET /metrics`: Prometheus text, only with `Authorization: Bearer <metrics token>`.

    Without a configured token the route does not exist (404, like any unknown path). The token is
    compared in constant time; a missing or wrong one is 401.
    """

    route = routes.by_name("metrics")

    def __init__(self, config: ServerConfig, supervisor: Supervisor, metrics: Metrics) -> None:
        self.token = config.metrics_token.encode()
        self.supervisor = supervisor
        self.metrics = metrics
        self.files: MetricsFiles | None = None  # set when several gateway processes share the port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = self._answer(scope)
        except WceError as exc:
            await send_error(send, exc, unread=body_unread(scope))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def _answer(self, scope: Scope) -> bytes:
        if not self.token:
            raise NotFound("no such page")
        given = b""
        for k, v in scope["headers"]:
            if k == b"authorization":
                scheme, _, given = v.partition(b" ")
                if scheme.lower() != b"bearer":
                    given = b""
        if not hmac.compare_digest(given.strip(), self.token):
            raise Unauthenticated("a valid metrics token is required")
        self.route.check(scope["method"])
        stats = self.supervisor.statistics()
        if self.files is not None:
            return self.files.render(self.metrics, stats.events).encode()
        return self.metrics.render(stats.live, stats.events).encode()

