"""In-memory sliding-window counters for throttling (failed logins, cenv creation).

Bounded: keys whose events all fell out of the window are dropped, and past `max_keys` the oldest
keys are evicted, so a flood of distinct keys cannot grow memory without bound.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque


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
