"""Tenant: everything a worker holds for its one cenv (connection, secret, settings, throttles)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import apsw

from wce.config import ServerConfig
from wce.core import accounts, caps, cenv, db, events, schema, settings, sqlguard
from wce.core.permissions import Access
from wce.core.scripts import crashes
from wce.core.session_cache import SessionCache
from wce.core.tables import Catalog
from wce.core.errors import RateLimited, Unauthenticated
from wce.core.throttle import SlidingWindow, StoredWindow

from . import crash_marker
from .events_hub import EventHub
from .scripting import ScriptRegistry
from .triggers import TriggerRunner
from .render_cache import RenderCache

# Failed logins: per client address and per username, in a 15-minute window, counted in the cenv's
# file (wce.core.throttle.StoredWindow): a worker exits when idle after 5 minutes, or crashes.
LOGIN_FAILURES_PER_IP = 30
LOGIN_FAILURES_PER_USER = 10
LOGIN_WINDOW = 900.0

Limiter = Callable[[apsw.Connection, Mapping[str, Any]], None]
"""Caps the process, given the cenv's connection and settings (see Tenant.open)."""


def read_settings(conn: apsw.Connection, config: ServerConfig) -> tuple[dict[str, int], dict[str, Any]]:
    """The cenv's ceilings (the server's flags or the operator's exceptions) and its settings, the
    caps among them at most those ceilings. Reads only our own rows: no tenant code runs."""
    ceilings = caps.ceilings(config.cenv_defaults(), caps.exceptions(conn))
    return ceilings, settings.read(conn, ceilings)


class Tenant:
    """One cenv, open. Used from one thread at a time (the worker's trio thread)."""

    def __init__(self, cenv_id: str, path: Path, conn: apsw.Connection, config: ServerConfig) -> None:
        self.cenv_id = cenv_id
        self.path = path
        self.conn = conn
        self.config = config
        self.secret = cenv.secret(conn)
        self.guard = sqlguard.Guard(conn)
        self.access = Access(conn, self.guard)
        self.catalog = Catalog(conn)
        self.notify: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None  # set by the server
        self.caps, self.settings = read_settings(conn, config)
        self.failed_by_ip = StoredWindow(conn, "ip", LOGIN_FAILURES_PER_IP, LOGIN_WINDOW)
        self.failed_by_user = StoredWindow(conn, "user", LOGIN_FAILURES_PER_USER, LOGIN_WINDOW)
        self.request_limiter: SlidingWindow | None = None  # rate_limit_per_minute, per client address
        self._apply_rate_limit()
        self.scripts = ScriptRegistry(self)
        conn.set_commit_hook(crash_marker.on_commit, id="crash_marker")  # which requests committed
        inherited = crash_marker.take_inherited()
        if inherited:  # predecessors that died running a script: count it against the script
            crashes.record_all(conn, inherited)
            self.scripts.invalidate()
        self.triggers = TriggerRunner(self)
        self.retire_after_reply = False  # set when a script hit the memory cap: answer, then exit
        # Commit hooks, then their subscribers in delivery order: pages are re-rendered before any
        # realtime listener hears of the commit, so a client that reacts by fetching sees them.
        self.bus = events.EventBus(conn)
        self.sessions = SessionCache(conn, self.bus)
        self.render_cache = RenderCache(conn, self.guard, self.access, run_context=self.scripts.run_context)
        self.bus.subscribe(self.render_cache.on_change)
        self.bus.subscribe(self.triggers.on_change)
        self.events = EventHub(self.bus, self.access, self.guard)
        self.render_cache.start()
        self.bus.flush()

    @classmethod
    def open(cls, cenv_id: str, path: Path, config: ServerConfig, *, limit: Limiter | None = None) -> Tenant:
        """Open an existing cenv file and bring its schema up to date. `limit` is called once the
        cenv's caps are known and before anything its tenant wrote can run (the worker caps itself
        there; tests that open a cenv in process pass none)."""
        if not path.exists():
            raise FileNotFoundError(cenv_id)
        conn = db.connect(str(path))
        try:
            schema.migrate(conn)
            accounts.purge_expired_sessions(conn)
            if limit is not None:
                limit(conn, read_settings(conn, config)[1])
            return cls(cenv_id, path, conn, config)
        except BaseException:
            conn.close()
            raise

    def identify(self, identity: dict[str, Any] | None) -> accounts.User | None:
        """The user behind the gateway's verified claims, if their session is still live.

        A dead session presented as a bearer token is an error (401); as a cookie it just means
        "signed out", so a stale cookie never locks a browser out of the login form.
        """
        if identity is None:
            return None
        try:
            user = self.sessions.resolve(int(identity["sub"]), str(identity["jti"]))
        except (KeyError, TypeError, ValueError):
            user = None
        if user is None and identity.get("via") == "bearer":
            raise Unauthenticated("session expired or revoked")
        return user

    def gateway_settings(self) -> dict[str, Any]:
        """The settings a gateway must know of this cenv (sent in Hello and after each change)."""
        return {"rate_limit_per_minute": int(self.settings["rate_limit_per_minute"])}

    def _apply_rate_limit(self) -> None:
        limit = int(self.settings["rate_limit_per_minute"])
        current = self.request_limiter.limit if self.request_limiter is not None else 0
        if limit != current:
            self.request_limiter = SlidingWindow(limit, 60.0) if limit > 0 else None

    def check_rate(self, client: str) -> None:
        """Count one request from client; RateLimited past the cenv's per-minute limit. Kept here,
        in the one process per cenv, so the limit holds however many gateways forward to it."""
        limiter = self.request_limiter
        if limiter is None:
            return
        retry = limiter.retry_after(client)
        if retry is not None:
            raise RateLimited("this cenv's request rate limit is reached; slow down", retry_after=retry)
        limiter.hit(client)

    async def announce_settings(self) -> None:
        """Apply changed settings, and tell every connected gateway about those it must know (a
        rate-limited cenv's pages are not served from the gateways' caches)."""
        self._apply_rate_limit()
        if self.notify is not None:
            await self.notify("settings", self.gateway_settings())

    def close(self) -> None:
        """Publish what is left, mark the render cache current, checkpoint and close the file."""
        try:
            self.bus.flush()
            self.render_cache.mark_clean()
            self.bus.close()
            self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        finally:
            self.conn.close()
