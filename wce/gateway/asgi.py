"""The gateway's ASGI entry: the one place that decides which path a request takes.

A request's route comes from the gateway's route table (wce.gateway.routes, after
wce.gateway.origins has said whether it is a cenv's); each route names the handler here that
answers it. A cenv's requests are forwarded to its worker straight from the ASGI layer (no framework
in between: this is the hot path); the platform's pages (landing page, /new, /healthz, lifespan)
go to the Quart app of platform routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import trio

from wce import proto
from wce.config import ServerConfig
from wce.core.errors import Timeout, TooLarge, Unauthenticated, Unavailable, WceError
from wce.responses import SESSION_COOKIE, error_from, etag_matches

from . import routes
from .answers import send_error
from .client import NotSent, WorkerGone
from .fates import admin_caller
from .editor import ASSETS, Editor
from .forwarded import trusted_proxies
from .logs import RequestLog
from .metrics import PAGE_CACHE_HEADER, Metrics
from .origins import Origins, cenv_in_path, cookie_counts, preflight_headers
from .platform import ImportRoute, MetricsRoute
from .supervisor import Supervisor

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Scope, Receive, Any, routes.Route, Any, str], Awaitable[None]]

COOKIE = SESSION_COOKIE.encode() + b"="
DROPPED_HEADERS = frozenset({b"authorization", b"cookie"})  # credentials reach the worker as `identity`


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it is known to exceed limit (an error
    raised here leaves the body unread: answer it with `send_error(..., unread=True)`).

    An HTTP/1 request with neither Content-Length (or a zero one) nor Transfer-Encoding has no
    body (RFC 9112 §6.3): it is not awaited, which saves a scheduler round trip per GET.
    """
    length: int | None = None
    chunked = False
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                length = int(v)
            except ValueError:
                length = -1  # let the protocol layer's own reading decide
            if length > limit:
                raise TooLarge(f"request body over {limit} bytes")
        elif k == b"transfer-encoding":
            chunked = True
    if not length and not chunked and scope.get("http_version") in ("1.1", "1.0"):
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _Disconnected
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable that yields an already-read body, then defers to the real one."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def credentials(headers: list[tuple[bytes, bytes]], cookie: bytes = COOKIE) -> tuple[str | None, str]:
    """The caller's token and where it came from: the Authorization header wins over the cookie
    (`cookie` is the session cookie's `name=`)."""
    cookie_token = None
    for k, v in headers:
        if k == b"authorization":
            scheme, _, token = v.partition(b" ")
            if scheme.lower() == b"bearer" and token:
                return token.strip().decode("latin-1"), "bearer"
            return "", "bearer"  # a malformed Authorization header is an invalid credential
        if k == b"cookie" and cookie in v:
            for part in v.split(b";"):
                part = part.strip()
                if part.startswith(cookie):
                    cookie_token = part[len(cookie):].decode("latin-1")
    return (cookie_token or None), "cookie"


class _Outcome:
    """The `send` handed down for one HTTP request: notes the status for the log and the counters."""

    __slots__ = ("send", "status", "pid", "extra")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.pid: int | None = None
        self.extra: list[tuple[bytes, bytes]] | None = None  # headers every answer gets (a cenv's)

    async def __call__(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            if self.extra:
                msg["headers"] = [*msg["headers"], *self.extra]
        await self.send(msg)


class Gateway:
    """ASGI callable: forwards cenv requests, hands the rest to the platform app.

    Every HTTP request is counted (wce.gateway.metrics) and, unless the log is `off`, gets one
    line in the request log (wce.gateway.logs) when its answer is over.
    """

    def __init__(self, config: ServerConfig, supervisor: Supervisor, platform: ASGIApp,
                 metrics: Metrics | None = None, log: RequestLog | None = None) -> None:
        self.config = config
        self.supervisor = supervisor
        self.platform = platform
        self.metrics = metrics or Metrics()
        self.log = log or RequestLog(config.access_log)
        self.proxies = trusted_proxies(config.forwarded_allow_ips)  # None: off (wce.gateway.forwarded)
        self.importer = ImportRoute(config, supervisor, self.metrics)
        self.metrics_route = MetricsRoute(config, supervisor, self.metrics)
        self.editor = Editor(supervisor)  # /{cenv}/_/ and /_/assets/ (wce.gateway.editor)
        self.origins = Origins(config.cenv_domain)  # path or subdomain mode (wce.gateway.origins)
        self.routes = routes.Routes(self.origins)
        self._streams: set[trio.CancelScope] = set()  # relays of streamed answers in progress
        self._ending = False
        self._handlers: dict[str, Handler] = {  # one for each `via` of wce.gateway.routes
            routes.APP: self._app, routes.IMPORT: self._import, routes.METRICS: self._metrics,
            routes.ASSETS: self._assets, routes.EDITOR: self._editor, routes.WORKER: self._worker,
            routes.SLASH: self._slash, routes.MOVED: self._moved,
        }

    def end_streams(self) -> None:
        """End every relayed stream cleanly, and any started later (the server is stopping):
        otherwise an open event stream would hold the graceful shutdown for its whole grace."""
        self._ending = True
        for scope in list(self._streams):
            scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.platform(scope, receive, send)
            return
        if self.proxies is not None:  # a trusted proxy's client address and scheme, for everything below
            self.proxies.rewrite(scope)
        t0 = perf_counter()
        out = _Outcome(send)
        route, cenv, path = self.routes.match(scope)
        try:
            await self._handlers[route.via](scope, receive, out, route, cenv, path)
        finally:
            seconds = perf_counter() - t0
            self.metrics.observe(route.name, out.status, seconds)
            if self.log.enabled:
                self.log.write(cenv, route.name, scope["method"], out.status, seconds, out.pid)

    # The handlers of the routes: (scope, receive, send, route, cenv or None, path: inside the cenv if any)

    async def _worker(self, scope: Scope, receive: Receive, send: _Outcome, route: routes.Route, cenv: str,
                      rest: str) -> None:
        """A cenv's request: a CORS preflight, a public page the worker pushed, or else forwarded."""
        send.extra = self.origins.cenv_headers
        if scope["method"] == "OPTIONS" and (preflight := preflight_headers(scope)) is not None:
            send.extra = None
            await send({"type": "http.response.start", "status": 204, "headers": preflight})
            await send({"type": "http.response.body", "body": b""})
        elif not await self.cached_page(scope, send, cenv, rest):
            await self.forward(scope, receive, send, cenv, rest)

    async def _editor(self, scope: Scope, receive: Receive, send: Send, route: routes.Route, cenv: str,
                      rest: str) -> None:
        if rest.startswith(ASSETS):
            await self.editor.asset(scope, send, route, rest)  # also on a cenv's own host (subdomain mode)
        else:
            await self.editor.shell(scope, send, route, cenv, rest, "" if self.origins.subdomains else f"/{cenv}")

    async def _assets(self, scope: Scope, receive: Receive, send: Send, route: routes.Route, cenv: None,
                      path: str) -> None:
        await self.editor.asset(scope, send, route, path)

    async def _import(self, scope: Scope, receive: Receive, send: Send, route: routes.Route, cenv: None,
                      path: str) -> None:
        await self.importer(scope, receive, send)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, route: routes.Route, cenv: None,
                       path: str) -> None:
        await self.metrics_route(scope, receive, send)

    async def _app(self, scope: Scope, receive: Receive, send: Send, route: routes.Route, cenv: None,
                   path: str) -> None:
        """The platform app, with the same body limit as a cenv's requests, enforced here so that
        every 413 is the same answer and closes the connection."""
        body = await self._body(scope, receive, send)
        if body is not None:
            await self.platform(scope, _replay(body, receive), send)

    async def _body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The request's body, within `--max-body`; None if the client went away, or if it was
        refused (answered here: 413, the connection closed)."""
        try:
            return await read_body(scope, receive, self.config.max_body)
        except _Disconnected:
            return None
        except WceError as exc:
            await send_error(send, exc, unread=True)
            return None

    async def _slash(self, scope: Scope, receive: Receive, send: Send, route: routes.Route, cenv: str,
                     rest: str) -> None:
        await self._redirect(scope, send, cenv, "/")

    async def _moved(self, scope: Scope, receive: Receive, send: Send, route: routes.Route, cenv: None,
                     path: str) -> None:
        named = cenv_in_path(path)
        assert named is not None  # routes.ELSEWHERE is only matched for such a path
        await self._redirect(scope, send, named[0], named[1] or "/")

    async def _redirect(self, scope: Scope, send: Send, cenv: str, rest: str) -> None:
        """308 to `rest` of the cenv: `/X` to `/X/` in path mode; to X's own host in subdomain
        mode (the query string kept; 308 keeps the method and body too)."""
        if self.origins.subdomains:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), self.origins.domain)
            target = self.origins.cenv_url(scope.get("scheme", "http"), host, cenv)[:-1] + rest
        else:
            target = f"/{cenv}{rest}"
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        await send({"type": "http.response.start", "status": 308,
                    "headers": [(b"location", target.encode("latin-1")), (b"content-length", b"0"),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})

    async def cached_page(self, scope: Scope, send: Send, cenv: str, rest: str) -> bool:
        """The fast path: answer a GET/HEAD of a public page its live worker pushed to us, without a
        hop (same headers and body as the worker's own answer). False when the worker must answer."""
        if scope["method"] not in ("GET", "HEAD"):
            return False
        worker = self.supervisor.live(cenv)
        if worker is None:
            return False
        page = worker.pages.get(rest)
        if page is None:
            return False
        if worker.rate_limit:
            return False  # the worker counts every request against the cenv's rate limit
        if worker.channel.unread():
            # the worker has told us something we have not read yet, maybe a newer version of this
            # page: with several gateways, the write that changed it may have been answered by
            # another gateway already (the worker pushes to all before it answers). Ask the worker.
            return False
        self.metrics.page_cache_result("hit")
        worker.touch_page(page)
        if type(send) is _Outcome:
            send.pid = worker.pid
        for k, v in scope["headers"]:
            if k == b"if-none-match" and etag_matches(v.decode("latin-1"), page.etag):
                await send({"type": "http.response.start", "status": 304, "headers": page.headers_304})
                await send({"type": "http.response.body", "body": b""})
                return True
        await send({"type": "http.response.start", "status": 200, "headers": page.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else page.body})
        return True

    async def forward(self, scope: Scope, receive: Receive, send: Send, cenv: str, rest: str) -> None:
        """Send one request to the cenv's worker and relay its answer.

        A worker can die before the gateway has noticed: a request that never reached it (the send
        failed) is sent once more, to a new worker. A request the worker had received when it died
        is answered by what the worker's crash marker says (wce.gateway.fates): the request whose
        script killed it gets 503 naming the cause (a memory bomb must not take down the
        replacement too), one that may have committed a write 503, any other is sent once more.
        """
        body = await self._body(scope, receive, send)
        if body is None:
            return
        token, via = credentials(scope["headers"], self.origins.cookie_name(scope.get("scheme", "http")))
        try:
            if via == "cookie" and token is not None and not cookie_counts(scope):
                token = None  # another origin's request: it goes on as anonymous
        except WceError as exc:
            await send_error(send, exc)
            return
        for attempt in (1, 2):
            try:
                worker, exchange = await self._send(scope, send, cenv, rest, body, token, via)
            except WorkerGone:
                if attempt == 1:
                    continue
                await send_error(send, _unavailable())
                return
            except WceError as exc:
                await send_error(send, exc)
                return
            try:
                try:
                    with trio.move_on_after(self.config.hard_deadline) as deadline:
                        first = await exchange.first()
                except NotSent:  # the worker died before our request was written to it (the reader,
                    if attempt == 1:  # which saw the connection end, has told the supervisor)
                        continue
                    raise
                except WorkerGone:  # it died with our request: its crash marker says what it was doing
                    fate = await self.supervisor.fate(worker)
                    if fate is not None and fate.caused_by(exchange.id):
                        await send_error(send, fate.error(admin_caller(worker.tokens, token)))
                        return
                    if attempt == 1 and fate is not None and fate.may_resend(exchange.id):
                        continue
                    raise
                if deadline.cancelled_caught:
                    self.supervisor.kill(worker, "deadline")
                    await send_error(send, _timeout())
                    return
                await self._relay(send, exchange, first, receive)
            except WorkerGone:
                await send_error(send, _unavailable())
            finally:
                exchange.close()  # tells the worker to stop if the answer is not all in
            return

    async def _send(self, scope: Scope, send: Send, cenv: str, rest: str, body: bytes, token: str | None,
                    via: str) -> tuple[Any, Any]:
        """Identify the caller and send the request to the cenv's worker: (worker, exchange)."""
        worker = await self.supervisor.get(cenv)
        if type(send) is _Outcome:
            send.pid = worker.pid
        client = scope.get("client")
        client_ip = client[0] if client else ""
        identity = None
        unknown = None  # a token verified here but not kept yet: kept once the worker accepts its session
        if token is not None:
            try:
                if not token:
                    raise Unauthenticated("malformed Authorization header")
                claims = worker.tokens.cached(token)
                if claims is None:
                    claims = worker.tokens.verify(token)
                    unknown = (token, claims)
                identity = {"sub": claims.user_id, "jti": claims.session_id, "role": claims.role, "via": via}
                if unknown is not None:
                    identity["confirm"] = True  # the worker answers with a `session` Notice if it is live
            except Unauthenticated:
                if via == "bearer":
                    raise
        try:
            exchange = await worker.send_request(
                unknown,
                cenv=cenv, method=scope["method"], path=rest,
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                         if k not in DROPPED_HEADERS],
                body=body, client=client_ip, scheme=scope.get("scheme", "http"),
                identity=identity,
            )
        except WorkerGone:
            self.supervisor.connection_lost(worker)  # dead before we noticed: never hand it out again
            raise
        return worker, exchange

    def _headers(self, raw: proto.Headers) -> list[tuple[bytes, bytes]]:
        headers = []
        for k, v in raw:
            if k == PAGE_CACHE_HEADER:
                self.metrics.page_cache_result(v)
            headers.append((k.encode("latin-1"), v.encode("latin-1")))
        return headers

    async def _relay(self, send: Send, exchange: Any, first: proto.Message, receive: Receive) -> None:
        if isinstance(first, proto.Response):
            headers = self._headers(first.headers)
            if first.status not in (204, 304):  # a known length: no chunked encoding, one write
                headers.append((b"content-length", str(len(first.body)).encode()))
            await send({"type": "http.response.start", "status": first.status, "headers": headers})
            await send({"type": "http.response.body", "body": first.body})
        elif isinstance(first, proto.StreamStart):
            await self._relay_stream(send, exchange, first, receive)
        elif isinstance(first, proto.Error):
            await send_error(send, error_from(first.code, first.message))

    async def _relay_stream(self, send: Send, exchange: Any, first: proto.StreamStart, receive: Receive) -> None:
        """Relay a streamed answer: an event stream (no size; ended when the server stops), or a
        whole answer too large for one message (its size known). Each piece is read from the
        worker only once the client's socket has taken the one before (`credit`): a client that
        does not read holds at most proto.STREAM_WINDOW of it here, and is dropped by the
        transport's send timeout."""
        headers = self._headers(first.headers)
        sized = first.size is not None
        if sized:
            headers.append((b"content-length", str(first.size).encode()))
        await send({"type": "http.response.start", "status": first.status, "headers": headers})
        # hypercorn does not cancel an app whose client left, it only queues http.disconnect:
        # watch for it, so that a stream nobody reads is cancelled (forward's finally sends Cancel)
        gone = trio.Event()
        cut = False
        with trio.CancelScope() as relaying:
            if not sized:
                self._streams.add(relaying)
                if self._ending:
                    relaying.cancel()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_disconnect, receive, relaying, gone)
                    try:
                        async for chunk in exchange.chunks():
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                            exchange.credit(len(chunk))
                    except WorkerGone:
                        cut = sized  # the head is sent: end an event stream; a sized answer is cut short
                    nursery.cancel_scope.cancel()
            finally:
                self._streams.discard(relaying)
        if not gone.is_set() and not cut:
            await send({"type": "http.response.body", "body": b""})


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope, gone: trio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    scope.cancel()


def _unavailable() -> WceError:
    return Unavailable("the cenv's worker stopped; try again")


def _timeout() -> WceError:
    return Timeout("the cenv did not answer in time")
