"""The realtime streams of a worker, fed by the event bus (the route is in events_routes).

One EventHub per worker subscribes to the bus; each open stream is an EventStream with its own
bounded queue. For every change set the hub picks, per stream, the rows of its tables its caller
may see (wce.core.events_access; computed once per caller and table, however many streams they
have open) and queues them as `data: {"table", "op", "rowid"}` lines. A commit too large to list
(see wce.core.events.ChangeSet.bulk) becomes one `{"table", "op": "bulk", "rowid": null}` per table.

A stream ends (the client sees the response end and may reconnect) when:
- the client goes away: the gateway sends Cancel, the request's scope is cancelled;
- the worker closes (Shutdown, SIGTERM): the server cancels every stream and sends StreamEnd;
- its caller's session is revoked or their role changed, or a grant it relied on is withdrawn;
- it falls `buffer` change sets behind (a client that does not read).
Every way out runs `close()`, which unsubscribes: nothing leaks. An open stream counts as a
request in flight, so a worker with a listener never idle-exits. Heartbeat comments keep proxies
from timing the stream out and let the gateway notice a client that has gone.

Knobs (environment, read when the worker starts): WCE_EVENT_STREAMS (open streams per cenv,
default 100, 503 beyond), WCE_EVENT_HEARTBEAT (seconds between heartbeats, default 15).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio

from wce.core import accounts, sqlguard
from wce.core.events import Change, ChangeSet, EventBus
from wce.core.events_access import visible_changes
from wce.core.errors import Unavailable
from wce.core.permissions import Access, Actor

MAX_STREAMS = 100  # open streams per cenv
HEARTBEAT = 15.0  # seconds
BUFFER = 256  # change sets a stream may fall behind before it is ended
SESSION_TABLES = frozenset({"_wce_sessions", "_wce_users"})
GRANT_TABLES = frozenset({"_wce_table_permissions", "_wce_row_policies"})


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Limits of the realtime streams of one worker."""

    max_streams: int = MAX_STREAMS
    heartbeat: float = HEARTBEAT
    buffer: int = BUFFER

    @classmethod
    def from_env(cls) -> StreamSettings:
        """The defaults, overridden by WCE_EVENT_STREAMS and WCE_EVENT_HEARTBEAT."""
        return cls(int(os.environ.get("WCE_EVENT_STREAMS", MAX_STREAMS)),
                   float(os.environ.get("WCE_EVENT_HEARTBEAT", HEARTBEAT)))


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """Open streams, and how many were opened and ended since the worker started."""

    open: int
    opened: int
    ended: int


class EventStream:
    """One client's stream: the tables it follows, its caller, and a queue of encoded events."""

    def __init__(self, hub: EventHub, actor: Actor, session: tuple[int, str] | None, tables: frozenset[str]) -> None:
        self.hub = hub
        self.actor = actor
        self.session = session
        self.tables = tables
        self._send, self._receive = trio.open_memory_channel[bytes](hub.settings.buffer)
        self.closed = False

    def push(self, data: bytes) -> None:
        """Queue events; a stream that has fallen too far behind is ended instead."""
        try:
            self._send.send_nowait(data)
        except trio.WouldBlock:
            self.end()
        except trio.ClosedResourceError:
            pass

    def end(self) -> None:
        """Finish after what is already queued (the client sees the response end)."""
        self._send.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The response body: a first comment (the subscription is live), then events and heartbeats."""
        yield b": connected\n\n"
        while True:
            data = None
            with trio.move_on_after(self.hub.settings.heartbeat):
                try:
                    data = await self._receive.receive()
                except trio.EndOfChannel:
                    return
            yield data if data is not None else b": heartbeat\n\n"

    def close(self) -> None:
        """Unsubscribe (idempotent); called however the stream ends."""
        if not self.closed:
            self.closed = True
            self._send.close()
            self.hub._forget(self)


class EventHub:
    """The worker's realtime streams, fed by one bus subscription."""

    def __init__(self, bus: EventBus, access: Access, guard: sqlguard.Guard,
                 settings: StreamSettings | None = None) -> None:
        self.access = access
        self.guard = guard
        self.settings = settings or StreamSettings.from_env()
        self.streams: set[EventStream] = set()
        self._opened = self._ended = 0
        self.subscription = bus.subscribe(self.on_change)

    def open(self, actor: Actor, session: tuple[int, str] | None, tables: frozenset[str]) -> EventStream:
        """A new stream, or Unavailable (503) past the cap."""
        if len(self.streams) >= self.settings.max_streams:
            raise Unavailable("too many event streams are open on this cenv; try again later")
        stream = EventStream(self, actor, session, tables)
        self.streams.add(stream)
        self._opened += 1
        return stream

    def _forget(self, stream: EventStream) -> None:
        if stream in self.streams:
            self.streams.discard(stream)
            self._ended += 1

    def statistics(self) -> HubStatistics:
        """Counts for tests and operators."""
        return HubStatistics(len(self.streams), self._opened, self._ended)

    def on_change(self, cs: ChangeSet) -> None:
        """Bus subscriber: queue each stream's share of the change set."""
        if not self.streams:
            return
        if cs.tables & GRANT_TABLES or cs.schema_changed:
            self.access.invalidate()
            for s in list(self.streams):
                if not all(self.access.allowed(s.actor.role, t, "select") for t in s.tables):
                    s.end()
        if cs.tables & SESSION_TABLES:
            for s in list(self.streams):
                if s.session is not None:
                    user = accounts.resolve_session(self.guard.conn, *s.session)
                    if user is None or user.role != s.actor.role:
                        s.end()
        followed = {t for s in self.streams for t in s.tables} & cs.tables
        if not followed:
            return
        if cs.bulk:
            for s in self.streams:
                tables = sorted(s.tables & cs.tables)
                if tables:
                    s.push(_encode([{"table": t, "op": "bulk", "rowid": None} for t in tables]))
            return
        by_table: dict[str, list[Change]] = {}
        for c in cs.changes:
            if c.table in followed:
                by_table.setdefault(c.table, []).append(c)
        memo: dict[tuple[str, int | None, str], set[int]] = {}
        for s in list(self.streams):
            wanted = s.tables & by_table.keys()
            if not wanted:
                continue
            ok: set[int] = set()
            for t in wanted:
                key = (s.actor.role, s.actor.user_id, t)
                if key not in memo:
                    memo[key] = {id(c) for c in visible_changes(self.access, self.guard, s.actor, t, by_table[t])}
                ok |= memo[key]
            events = [{"table": c.table, "op": c.op, "rowid": c.rowid} for c in cs.changes if id(c) in ok]
            if events:
                s.push(_encode(events))


def _encode(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
