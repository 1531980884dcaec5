"""What a worker sends its gateways, bounded (findings M1, L3, M2, M3), driven over an in-memory
gateway connection: large answers in pieces within the gateway's credits, pages pushed within the
cenv's share and in Notices far under the frame limit, a session Notice only for a live session."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from wce import proto
from wce.config import ServerConfig
from wce.core import accounts, cenv, ids
from wce.proto.channel import MessageChannel
from wce.worker import limits, server
from wce.worker.render_cache import Entry
from wce.worker.tenant import Tenant

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$xJcWa1n1bgcIb2bUf/GszFrXu8UKfV6B8wgAQeJMDmE"
MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker arms RLIMIT_CPU per request: not on the test runner's own process."""
    monkeypatch.setattr(limits, "arm_cpu", lambda budget_ms: None)


class Link:
    """The test's side of a gateway connection: every message the worker sent, in order."""

    def __init__(self, ch: MessageChannel, tenant: Tenant) -> None:
        self.ch = ch
        self.tenant = tenant
        self.got: list[proto.Message] = []
        self.next_id = 1

    async def read(self) -> None:
        async for msg in self.ch:
            self.got.append(msg)

    async def request(self, path: str, method: str = "GET", identity: dict[str, Any] | None = None,
                      body: bytes = b"") -> int:
        req_id, self.next_id = self.next_id, self.next_id + 1
        await self.ch.send(proto.Request(req_id, self.tenant.cenv_id, method, path, "", [], body, "127.0.0.1", "http",
                                         identity))
        return req_id

    def of(self, req_id: int) -> list[proto.Message]:
        return [m for m in self.got if getattr(m, "id", None) == req_id]

    async def answer(self, req_id: int) -> proto.Message:
        with trio.fail_after(30):
            while not any(isinstance(m, (proto.Response, proto.Error, proto.StreamEnd)) for m in self.of(req_id)):
                await trio.sleep(0.01)
        return self.of(req_id)[-1]


async def connect(worker: server.Worker, tenant: Tenant, nursery: trio.Nursery) -> Link:
    ours, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(worker.serve_connection, theirs)  # type: ignore[arg-type]
    ch = MessageChannel(ours)
    await ch.send(proto.Hello(proto.PROTOCOL_VERSION, "gateway", {}))
    assert isinstance(await ch.receive(), proto.Hello)
    link = Link(ch, tenant)
    nursery.start_soon(ch.run_writer)
    nursery.start_soon(link.read)
    return link


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[server.Worker, Link, dict[str, Any]]]:
    config = ServerConfig(data=str(tmp_path), page_cache_mb=8)  # a cenv pushes 2 MiB at most
    cid = ids.new_id()
    tenant = Tenant.open(cid, cenv.create(tmp_path, cid, "admin", HASH), config)
    admin = accounts.find_for_login(tenant.conn, "admin")
    assert admin is not None
    sid, _ = accounts.open_session(tenant.conn, admin.user, 3600, ip=None, user_agent=None)
    tenant.bus.flush()
    worker = server.Worker(tenant, config)
    link = await connect(worker, tenant, nursery)
    yield worker, link, {"sub": admin.user.id, "jti": sid, "role": "admin", "via": "bearer"}
    tenant.close()


async def test_a_large_answer_runs_at_most_a_window_ahead_of_the_credits(
        setup: tuple[server.Worker, Link, dict[str, Any]]) -> None:
    worker, link, admin = setup
    size = 3 * MiB + 12345
    src = f"def handle_request(ctx):\n    return response(body='z' * {size}, content_type='text/plain')\n"
    created = await link.request("/api/endpoints", "POST", admin,
                                 f'{{"method": "GET", "path": "/big", "source": "{src!s}", "access": "public"}}'
                                 .replace("\n", "\\n").encode())
    assert (await link.answer(created)).status == 201  # type: ignore[union-attr]
    rid = await link.request("/fn/big")
    received = 0
    while True:
        await trio.testing.wait_all_tasks_blocked()  # the worker waits for credit (or is done)
        msgs = link.of(rid)
        start = msgs[0]
        assert isinstance(start, proto.StreamStart) and start.size == size and start.status == 200
        chunks = [m for m in msgs if isinstance(m, proto.StreamChunk)]
        sent = sum(len(c.data) for c in chunks)
        assert sent - received <= proto.STREAM_WINDOW  # never more than the window beyond the credits
        if isinstance(msgs[-1], proto.StreamEnd):
            break
        assert sent > received  # it does not stall while it has credit
        await link.ch.send(proto.Credit(rid, sent - received))
        received = sent
    assert b"".join(c.data for c in chunks) == b"z" * size
    assert not worker.windows


async def test_an_answer_over_the_limit_is_an_error_and_the_connection_lives(
        setup: tuple[server.Worker, Link, dict[str, Any]]) -> None:
    _, link, admin = setup
    src = f"def handle_request(ctx):\n    return response(body='z' * {server.MAX_ANSWER + 1})\n"
    created = await link.request("/api/endpoints", "POST", admin,
                                 f'{{"method": "GET", "path": "/huge", "source": "{src!s}", "access": "public"}}'
                                 .replace("\n", "\\n").encode())
    assert (await link.answer(created)).status == 201  # type: ignore[union-attr]
    err = await link.answer(await link.request("/fn/huge"))
    assert isinstance(err, proto.Error) and err.code == "internal" and "16 MiB" in err.message
    assert (await link.answer(await link.request("/auth/me", identity=admin))).status == 200  # type: ignore[union-attr]


async def test_a_session_notice_comes_only_for_a_live_session(setup: tuple[server.Worker, Link, dict[str, Any]]) -> None:
    _, link, admin = setup
    cases = [({**admin, "confirm": True}, True, 200), (admin, False, 200),
             ({**admin, "jti": "forged", "confirm": True}, False, 401),
             ({**admin, "jti": "forged", "via": "cookie", "confirm": True}, False, 401)]
    for identity, noticed, status in cases:
        rid = await link.request("/auth/me", identity=identity)
        answer = await link.answer(rid)
        notices = [m for m in link.got if isinstance(m, proto.Notice) and m.topic == "session" and m.data["id"] == rid]
        assert answer.status == status and bool(notices) is noticed, identity  # type: ignore[union-attr]
        if noticed:
            assert link.got.index(notices[0]) < link.got.index(answer)  # before the answer: the gateway still waits


def entry(path: str, size: int) -> Entry:
    return Entry(1, path, "public", "text/html; charset=utf-8", b"x" * size, f'"{path}"', 0.0)


async def test_page_notices_stay_far_under_the_frame_limit(setup: tuple[server.Worker, Link, dict[str, Any]]) -> None:
    worker, _, _ = setup
    entries = {f"/p{i}": entry(f"/p{i}", MiB - 1000) for i in range(40)}  # 40 MiB of pages
    notices = worker._pages_notices(entries, ["/gone"], reset=True)
    assert len(notices) > 1
    assert [n.data["reset"] for n in notices] == [True] + [False] * (len(notices) - 1)
    for n in notices:
        assert len(proto.encode(n)) <= server.NOTICE_BYTES + server.PAGE_OVERHEAD + MiB < proto.MAX_FRAME
    paths = [p["path"] for n in notices for p in n.data["pages"]]
    assert paths == ["/gone", *entries]
    assert worker._pages_notices({}, [], reset=True)[0].data == {"reset": True, "pages": []}


async def test_a_cenv_pushes_at_most_its_share_of_the_budget(setup: tuple[server.Worker, Link, dict[str, Any]],
                                                             nursery: trio.Nursery) -> None:
    worker, link, admin = setup
    for i in range(5):
        page = {"path": f"/p{i}", "template": "{{#q}}{{s}}{{/q}}", "queries": {"q": "SELECT hex(randomblob(300000)) AS s"}}
        answer = await link.answer(await link.request("/api/pages", "POST", admin, json.dumps(page).encode()))
        assert answer.status == 201  # type: ignore[union-attr]
    second = await connect(worker, worker.tenant, nursery)  # another gateway: a reset with every pushed page
    with trio.fail_after(30):
        while not any(isinstance(m, proto.Notice) and m.topic == "pages" for m in second.got):
            await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()
    pushed = [p for m in second.got if isinstance(m, proto.Notice) and m.topic == "pages" for p in m.data["pages"]]
    assert [p["path"] for p in pushed] == ["/p0", "/p1", "/p2"]  # 3 x 600 KB within 2 MiB; the rest by the worker
    assert sum(len(p["body"]) for p in pushed) <= worker.push_budget
