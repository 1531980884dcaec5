"""Sliding-window counters for throttling: in memory (cenv creation, a cenv's request rate) or in
a cenv's file (failed logins).

Bounded: in memory, keys whose events all fell out of the window are dropped, and past `max_keys`
the oldest keys are evicted, so a flood of distinct keys cannot grow memory without bound; in the
file, every event older than the window is deleted whenever one is added.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

import apsw


class SlidingWindow:
    """At most `limit` events per key within `window` seconds."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        q = self._events.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._events[key]
            return None
        return q

    def retry_after(self, key: str, now: float | None = None) -> int | None:
        """Seconds until key may act again, or None if it may act now."""
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        if q is None or len(q) < self.limit:
            return None
        return max(1, math.ceil(q[0] + self.window - now))

    def hit(self, key: str, now: float | None = None) -> None:
        """Count one event for key."""
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        if q is None:
            q = self._events[key] = deque()
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        q.append(now)

    def reset(self, key: str) -> None:
        """Forget key (e.g. after a successful login)."""
        self._events.pop(key, None)


class StoredWindow:
    """At most `limit` events per key within `window` seconds, counted in the cenv's
    `_wce_login_failures` under `kind` (wall-clock times): the counts outlive the worker, which
    exits when idle long before a 15-minute window is over, or when it crashes (finding L4).
    Same methods as SlidingWindow. Meant for rare events (a failed login costs a password hash
    first): each `hit` is a write."""

    def __init__(self, conn: apsw.Connection, kind: str, limit: int, window: float) -> None:
        self.conn, self.kind, self.limit, self.window = conn, kind, limit, window

    def retry_after(self, key: str, now: float | None = None) -> int | None:
        """Seconds until key may act again, or None if it may act now."""
        now = time.time() if now is None else now
        count, oldest = self.conn.execute(
            "SELECT count(*), min(ts) FROM _wce_login_failures WHERE kind = ? AND key = ? AND ts > ?",
            (self.kind, key, now - self.window)).fetchone()
        if count < self.limit:
            return None
        return max(1, math.ceil(oldest + self.window - now))

    def hit(self, key: str, now: float | None = None) -> None:
        """Count one event for key (and forget every event of any key past the window)."""
        now = time.time() if now is None else now
        with self.conn:
            self.conn.execute("DELETE FROM _wce_login_failures WHERE ts <= ?", (now - self.window,))
            self.conn.execute("INSERT INTO _wce_login_failures(kind, key, ts) VALUES (?, ?, ?)", (self.kind, key, now))

    def reset(self, key: str) -> None:
        """Forget key (e.g. after a successful login)."""
        if self.conn.execute("SELECT 1 FROM _wce_login_failures WHERE kind = ? AND key = ? LIMIT 1",
                             (self.kind, key)).fetchone():
            self.conn.execute("DELETE FROM _wce_login_failures WHERE kind = ? AND key = ?", (self.kind, key))
