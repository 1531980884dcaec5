"""The browser editor: its shell page, its bundled assets, and the gateway's CSRF check.

- `GET /{cenv}/_/` is the shell: a small HTML page that loads the bundle. It holds no data (the
  app signs in and reads everything through the cenv's own API), so it is served by the gateway
  without waking the cenv's worker; an unknown cenv is a 404 all the same.
- `GET /_/assets/{name}` serves the bundle that `npm run build` wrote to static/dist/ (see
  static/editor/build.mjs). File names carry a content hash, so the answers are cached for a
  year (`immutable`) and shared by every cenv; only the names listed in the build's manifest are
  served, precompressed (brotli or gzip, by `Accept-Encoding`).

In subdomain mode (wce.gateway.origins) the shell is at `/_/` of the cenv's own host, and the
assets are served there too: a browser keeps a cache per site, so assets shared from the apex
would be fetched once per cenv all the same, and same-origin ones need no CORS and let the
editor start its web worker.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from wce.core.errors import NotFound, Unavailable, WceError

from .answers import body_unread, send_error
from .routes import Route

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DIST = Path(__file__).resolve().parents[2] / "static" / "dist"
ASSETS = "/_/assets/"
SHELL_PATH = "/_/"

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    # Monaco writes its theme and decoration rules into <style> elements at run time
    "style-src 'self' 'unsafe-inline'",
    "font-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self'",
    "frame-src 'self'",  # the preview: the cenv's own pages, in a sandboxed iframe
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SHELL_HEADERS = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),  # in path mode "same-origin" would be every cenv: never tell one another's id
    ("cross-origin-opener-policy", "same-origin"),
]

SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>WCE editor</title>
<link rel="icon" href="data:,">
{links}
<meta name="wce-worker" content="{worker}">
<script type="module" src="{app}"></script>
</head><body><div id="app"><p class="boot">Loading the editor&hellip;</p></div></body></html>
"""

TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".ttf": "font/ttf",
         ".woff2": "font/woff2", ".svg": "image/svg+xml"}
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))


class Editor:
    """Serves the shell and the assets; reads static/dist/manifest.json once it exists."""

    def __init__(self, supervisor: Any, dist: Path = DIST) -> None:
        self.supervisor = supervisor  # its exists(cenv) is one stat: no worker is started
        self.dist = dist
        self._shell: bytes | None = None
        self._names: frozenset[str] = frozenset()
        self._files: dict[tuple[str, str], bytes] = {}
        self._mtime = 0

    def _load(self) -> bool:
        """Read the manifest if it is new (one stat per call: a rebuild is picked up without a restart)."""
        try:
            mtime = (self.dist / "manifest.json").stat().st_mtime_ns
            if self._shell is not None and mtime == self._mtime:
                return True
            manifest = json.loads((self.dist / "manifest.json").read_text())
        except (OSError, ValueError):
            return self._shell is not None
        self._names = frozenset(manifest.get("sizes", {}))
        links = [f'<link rel="stylesheet" href="{_url(n)}">' for n in manifest["css"]]
        links += [f'<link rel="modulepreload" href="{_url(n)}">' for n in manifest["preload"]]
        self._shell = SHELL.format(links="\n".join(links), app=_url(manifest["app"]), worker=_url(manifest["worker"])).encode()
        self._files.clear()
        self._mtime = mtime
        return True

    async def shell(self, scope: Scope, send: Send, route: Route, cenv: str, rest: str, root: str) -> None:
        """`{root}/_` and everything under it (rest starts with `/_`); root is `/{cenv}` in path
        mode, empty on the cenv's own host. These routes read no body (wce.gateway.answers)."""
        try:
            if rest == "/_":
                await _send(send, scope, 308, [("location", f"{root}/_/"), ("content-length", "0")], b"")
                return
            if rest != SHELL_PATH:
                raise NotFound("no such page")
            route.check(scope["method"])
            if not self.supervisor.exists(cenv):
                raise NotFound("no such cenv")
            if not self._load():
                raise Unavailable("the editor is not built on this server (run `make build`)")
            assert self._shell is not None
            await _send(send, scope, 200, SHELL_HEADERS, self._shell)
        except WceError as exc:
            await send_error(send, exc, unread=body_unread(scope))

    async def asset(self, scope: Scope, send: Send, route: Route, path: str) -> None:
        """`/_/assets/{name}`: one file of the build, compressed if the client takes it."""
        try:
            name = path[len(ASSETS):]
            if not self._load() or name not in self._names:
                raise NotFound("no such asset")
            route.check(scope["method"])
            encoding, suffix = _encoding(scope["headers"])
            body = await self._read(name, suffix)
        except WceError as exc:
            await send_error(send, exc, unread=body_unread(scope))
            return
        headers = [("content-type", TYPES.get(Path(name).suffix, "application/octet-stream")),
                   ("cache-control", "public, max-age=31536000, immutable"),
                   ("vary", "accept-encoding"), ("x-content-type-options", "nosniff"),
                   ("cross-origin-resource-policy", "same-origin"), ("content-length", str(len(body)))]
        if encoding:
            headers.append(("content-encoding", encoding))
        await _send(send, scope, 200, headers, body)

    async def _read(self, name: str, suffix: str) -> bytes:
        key = (name, suffix)
        body = self._files.get(key)
        if body is None:
            try:
                body = await trio.to_thread.run_sync((self.dist / (name + suffix)).read_bytes)
            except OSError:
                raise NotFound("no such asset") from None
            self._files[key] = body
        return body


def _url(name: str) -> str:
    return html.escape(ASSETS + name)


def _encoding(headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The best precompressed variant the client accepts: ("br", ".br"), ("gzip", ".gz") or ("", "")."""
    accepted: set[str] = set()
    for k, v in headers:
        if k == b"accept-encoding":
            for item in v.decode("latin-1").split(","):
                token, _, params = item.strip().partition(";")
                q = params.strip().replace(" ", "")
                if q in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
                    continue
                accepted.add(token.strip().lower())
    for encoding, suffix in ENCODINGS:
        if encoding in accepted:
            return encoding, suffix
    return "", ""


async def _send(send: Send, scope: Scope, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

