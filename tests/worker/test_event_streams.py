"""Realtime streams inside one worker, driven over an in-memory gateway connection: what a stream
carries, and every way it ends (Cancel, Shutdown, revoked session) without leaking a subscription."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from wce import proto
from wce.config import ServerConfig
from wce.core import accounts, cenv, ids
from wce.core.permissions import Actor
from wce.proto.channel import MessageChannel
from wce.worker import limits, server
from wce.worker.events_hub import StreamSettings
from wce.worker.tenant import Tenant

# one argon2 hash for every cenv of this module (hashing is slow on purpose)
HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$xJcWa1n1bgcIb2bUf/GszFrXu8UKfV6B8wgAQeJMDmE"


@dataclass
class Gateway:
    """The test's side of one gateway connection to an in-process worker."""

    ch: MessageChannel
    tenant: Tenant
    worker: server.Worker
    inbox: dict[int, trio.MemorySendChannel[proto.Message]] = field(default_factory=dict)
    next_id: int = 1

    async def request(self, path: str, *, method: str = "GET", identity: dict[str, Any] | None = None,
                      body: bytes = b"") -> trio.MemoryReceiveChannel[proto.Message]:
        req_id, self.next_id = self.next_id, self.next_id + 1
        send, receive = trio.open_memory_channel[proto.Message](100)
        self.inbox[req_id] = send
        p, _, q = path.partition("?")
        await self.ch.send(proto.Request(req_id, self.tenant.cenv_id, method, p, q, [], body, "127.0.0.1", "http", identity))
        return receive

    async def route(self) -> None:
        async for msg in self.ch:
            rid = getattr(msg, "id", None)
            if rid in self.inbox:
                await self.inbox[rid].send(msg)


@pytest.fixture(autouse=True)
def no_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker arms RLIMIT_CPU per request: not on the test runner's own process."""
    monkeypatch.setattr(limits, "arm_cpu", lambda budget_ms: None)


@pytest.fixture
async def gw(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Gateway]:
    config = ServerConfig(data=str(tmp_path), idle_timeout=0.2)
    cid = ids.new_id()
    path = cenv.create(tmp_path, cid, "admin", HASH)
    tenant = Tenant.open(cid, path, config)
    tenant.events.settings = StreamSettings(max_streams=2, heartbeat=0.1, buffer=4)
    tenant.conn.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner INTEGER, body TEXT);"
        "INSERT INTO _wce_table_permissions(table_name, role, can_select) VALUES ('notes', 'user', 1), ('notes', 'anon', 1);"
        "INSERT INTO _wce_row_policies(table_name, role, action, using_expr) VALUES ('notes', 'user', 'select', 'owner = :user_id')"
    )
    tenant.bus.flush()
    worker = server.Worker(tenant, config)
    ours, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(worker.serve_connection, theirs)  # type: ignore[arg-type]  # any trio stream will do
    ch = MessageChannel(ours)
    await ch.send(proto.Hello(proto.PROTOCOL_VERSION, "gateway", {}))
    assert isinstance(await ch.receive(), proto.Hello)
    g = Gateway(ch, tenant, worker)
    nursery.start_soon(g.route)
    yield g
    tenant.close()


def sign_in(t: Tenant, username: str, role: str = "user") -> dict[str, Any]:
    """A user (created if need be) with a live session, as the gateway's verified identity."""
    found = accounts.find_for_login(t.conn, username)
    user = found.user if found else accounts.create_user(t.conn, username, HASH, role, actor=None, ip=None)
    sid, _ = accounts.open_session(t.conn, user, 3600, ip=None, user_agent=None)
    t.bus.flush()
    return {"sub": user.id, "jti": sid, "role": user.role, "via": "bearer"}


async def next_data(rx: trio.MemoryReceiveChannel[proto.Message]) -> list[dict[str, Any]]:
    """The events of the next data chunk (heartbeats skipped)."""
    with trio.fail_after(5):
        while True:
            msg = await rx.receive()
            assert isinstance(msg, proto.StreamChunk), msg
            if msg.data.startswith(b"data: "):
                return [json.loads(line[6:]) for line in msg.data.split(b"\n") if line.startswith(b"data: ")]


async def open_stream(gw: Gateway, tables: str, identity: dict[str, Any] | None = None) -> trio.MemoryReceiveChannel[proto.Message]:
    rx = await gw.request(f"/api/events?tables={tables}", identity=identity)
    with trio.fail_after(5):
        start = await rx.receive()
        assert isinstance(start, proto.StreamStart) and start.status == 200, start
        assert ("content-type", "text/event-stream; charset=utf-8") in start.headers
        first = await rx.receive()
    assert isinstance(first, proto.StreamChunk) and first.data == b": connected\n\n"
    return rx


async def wait_until(cond: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not cond():
            await trio.sleep(0.01)


async def test_a_stream_sees_the_rows_its_caller_may_see(gw: Gateway) -> None:
    alice = sign_in(gw.tenant, "alice")
    rx = await open_stream(gw, "notes", alice)
    conn = gw.tenant.conn
    for sql in ("INSERT INTO notes(id, owner, body) VALUES (1, :me, 'mine'), (2, 999, 'not mine')",
                "UPDATE notes SET body = 'x'",
                "DELETE FROM notes"):  # no WHERE: still one event per row
        conn.execute(sql, {"me": alice["sub"]})
        gw.tenant.bus.flush()  # as the worker does after each request
    assert await next_data(rx) == [{"table": "notes", "op": "insert", "rowid": 1}]
    assert await next_data(rx) == [{"table": "notes", "op": "update", "rowid": 1}]
    assert await next_data(rx) == [{"table": "notes", "op": "delete", "rowid": 1}]  # judged on the row it was


async def test_heartbeats_and_cancel_unsubscribes(gw: Gateway) -> None:
    subscribers = gw.tenant.bus.statistics().subscribers
    rx = await open_stream(gw, "notes")
    with trio.fail_after(5):
        assert (await rx.receive()) == proto.StreamChunk(1, b": heartbeat\n\n")
    hub = gw.tenant.events
    assert hub.statistics().open == 1 and gw.worker.inflight == 1
    await gw.ch.send(proto.Cancel(1))  # the client went away
    await wait_until(lambda: hub.statistics().open == 0 and gw.worker.inflight == 0)
    assert gw.tenant.bus.statistics().subscribers == subscribers  # streams share the hub's one subscription


async def test_stream_cap(gw: Gateway) -> None:
    await open_stream(gw, "notes")
    await open_stream(gw, "notes")
    rx = await gw.request("/api/events?tables=notes")
    with trio.fail_after(5):
        r = await rx.receive()
    assert isinstance(r, proto.Response) and r.status == 503
    assert json.loads(r.body)["error"]["code"] == "unavailable"


async def test_an_open_stream_keeps_the_worker_but_shutdown_ends_it_at_once(gw: Gateway, nursery: trio.Nursery) -> None:
    rx = await open_stream(gw, "notes")
    nursery.start_soon(gw.worker.watch_idle)
    await trio.sleep(0.6)  # three idle timeouts
    assert gw.worker.closing is None
    await gw.ch.send(proto.Shutdown())
    with trio.fail_after(2):
        while not isinstance(msg := await rx.receive(), proto.StreamEnd):
            assert isinstance(msg, proto.StreamChunk)
    await wait_until(lambda: gw.tenant.events.statistics().open == 0)


async def test_logout_ends_the_stream(gw: Gateway) -> None:
    bob = sign_in(gw.tenant, "bob")
    rx = await open_stream(gw, "notes", bob)
    user = accounts.User(bob["sub"], "bob", "user")
    accounts.revoke_session(gw.tenant.conn, user, bob["jti"], ip=None)
    gw.tenant.bus.flush()
    with trio.fail_after(5):
        while not isinstance(msg := await rx.receive(), proto.StreamEnd):
            assert isinstance(msg, proto.StreamChunk) and not msg.data.startswith(b"data:")
    await wait_until(lambda: gw.tenant.events.statistics().open == 0)


async def test_a_withdrawn_grant_ends_the_stream(gw: Gateway) -> None:
    rx = await open_stream(gw, "notes")
    gw.tenant.conn.execute("DELETE FROM _wce_table_permissions WHERE role = 'anon'")
    gw.tenant.bus.flush()
    with trio.fail_after(5):
        while not isinstance(await rx.receive(), proto.StreamEnd):
            pass


async def test_a_client_that_does_not_read_is_dropped(gw: Gateway) -> None:
    hub = gw.tenant.events
    stream = hub.open(Actor.anon(), None, frozenset({"notes"}))
    for i in range(10):  # buffer is 4 change sets
        gw.tenant.conn.execute("INSERT INTO notes(body) VALUES (?)", (str(i),))
        gw.tenant.bus.flush()
    chunks = [c async for c in stream.chunks()]
    assert chunks[0] == b": connected\n\n" and len(chunks) == 5  # what was queued, then the end
    stream.close()
    assert hub.statistics().open == 0


async def test_head_does_not_open_a_stream(gw: Gateway) -> None:
    rx = await gw.request("/api/events?tables=notes", method="HEAD")
    with trio.fail_after(5):
        r = await rx.receive()
    assert isinstance(r, proto.Response) and r.status == 200 and r.body == b""
    assert gw.tenant.events.statistics().open == 0
