"""Live sessions remembered between requests, so that an authenticated request does not run the
session JOIN (10 µs alone, the largest single cost of a forwarded row GET in the worker's profile).

An entry answers only while nothing that could change its answer has happened since it was read:

* this connection committed a write to `_wce_sessions` or `_wce_users` (logout, password change,
  a user disabled or deleted): the event bus counts those in its WAL hook when COMMIT returns, so
  even a request running alongside the one that committed sees it, not only the next flush;
* another connection committed anything (`wce users passwd` writes the file directly):
  `PRAGMA data_version` changes (read once per request);
(both through `EventBus.version`, which the script registry uses the same way);
* the session expired: its expiry is kept with the entry and checked against the clock.

On any such change the whole cache is dropped (those writes are rare); a revoked session is
therefore refused on the very next request, as without the cache. Refusals are not cached.
"""

from __future__ import annotations

import time

import apsw

from .accounts import User, live_session
from .events import EventBus

MAX_ENTRIES = 10_000
_WATCHED = ("_wce_sessions", "_wce_users")


class SessionCache:
    """`resolve(user_id, session_id)`, as `accounts.resolve_session`, with a memory."""

    def __init__(self, conn: apsw.Connection, bus: EventBus, max_entries: int = MAX_ENTRIES) -> None:
        self._conn = conn
        self.bus = bus
        self._max = max_entries
        self._entries: dict[tuple[int, str], tuple[User, float]] = {}
        self._stamp: tuple[int, ...] | None = None

    def resolve(self, user_id: int, session_id: str) -> User | None:
        """The user behind a live session, or None if it is revoked, expired, or the user is gone
        or disabled."""
        stamp = self.bus.version(*_WATCHED)
        if stamp != self._stamp:
            self._entries.clear()
            self._stamp = stamp
        key = (user_id, session_id)
        hit = self._entries.get(key)
        if hit is not None and hit[1] > time.time():
            return hit[0]
        found = live_session(self._conn, user_id, session_id)
        if found is None:
            self._entries.pop(key, None)
            return None
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = found
        return found[0]

    def __len__(self) -> int:
        return len(self._entries)
