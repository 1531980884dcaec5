"""The gateway's byte budgets (pushed pages, verified tokens): one LRU per gateway process across
all cenvs, whose bound holds however much a worker pushes or a client presents (M1, M2)."""

from __future__ import annotations

import time
from typing import Any

import trio
import trio.testing

from wce import proto
from wce.core.auth import make_token, verify_token
from wce.gateway.budget import Budget
from wce.gateway.client import WorkerClient
from wce.gateway.tokens import TokenCache
from wce.proto.channel import MessageChannel
from wce.proto.testing import channel_pair

SECRET = b"k" * 32


class Entry:
    pass


def test_budget_evicts_the_least_recently_used_of_any_owner() -> None:
    b = Budget(100)
    a: dict[str, Entry] = {}
    c: dict[str, Entry] = {}
    x, y, z = Entry(), Entry(), Entry()
    assert b.put(a, "x", x, 40) and b.put(c, "y", y, 40)
    b.touch(x)  # x used after y: y is now the least recently used
    assert b.put(a, "z", z, 40)
    assert a == {"x": x, "z": z} and c == {} and b.used == 80
    assert b.statistics().evictions == 1 and b.statistics().entries == 2


def test_budget_bound_holds_and_oversize_entries_are_refused() -> None:
    b = Budget(1000)
    owners: list[dict[int, Entry]] = [{} for _ in range(7)]
    for i in range(500):
        assert b.put(owners[i % 7], i, Entry(), 10 + i % 90)
        assert b.used <= 1000 and b.used == sum(10 + k % 90 for o in owners for k in o)
    big: dict[str, Entry] = {}
    assert b.put(big, "k", Entry(), 10)
    assert not b.put(big, "k", Entry(), 1001) and big == {}  # too big: not kept, and the old one gone
    b.discard(owners[0], next(iter(owners[0])))
    for o in owners:
        b.release(o)
    assert b.used == 0 and b.statistics().entries == 0 and all(not o for o in owners)


def claims_for(token: str) -> Any:
    return verify_token(SECRET, "c" * 26, token)


def test_token_cache_keeps_only_what_it_is_given_and_within_the_shared_budget() -> None:
    budget = Budget(64 * 1024)
    caches = [TokenCache(SECRET, "c" * 26, budget), TokenCache(SECRET, "c" * 26, budget)]
    token, _ = make_token(SECRET, "c" * 26, 1, "user", "s1", 3600)
    claims = caches[0].verify(token)
    assert caches[0].cached(token) is None  # verified is not kept: the worker has not accepted its session yet
    caches[0].add(token, claims)
    assert caches[0].cached(token) == claims
    # thousands of big tokens, as an owner with its own secret could forge (were they accepted)
    for i in range(2000):
        t, _ = make_token(SECRET, "c" * 26, 1, "r" * 600, f"{i:06d}" + "j" * 2200, 3600)
        caches[i % 2].add(t, claims_for(t))
        assert budget.used <= budget.limit
    assert len(caches[0]) + len(caches[1]) < 30 and budget.statistics().evictions > 1900
    caches[0].clear()
    caches[1].clear()
    assert budget.used == 0


def test_an_expired_cached_token_is_not_a_hit() -> None:
    cache = TokenCache(SECRET, "c" * 26)
    token, _ = make_token(SECRET, "c" * 26, 1, "user", "s1", 3600)
    claims = cache.verify(token)
    cache.add(token, type(claims)(claims.user_id, claims.session_id, claims.role, int(time.time()) - 1))
    assert cache.cached(token) is None


def client(budget: Budget, channel: MessageChannel | None = None) -> WorkerClient:
    if channel is None:
        channel = MessageChannel(trio.testing.memory_stream_pair()[0])
    return WorkerClient("c" * 26, 0, -1, channel, SECRET, lambda w: None, lambda w: None, budget, Budget(1 << 20))


def page(path: str, size: int) -> dict[str, Any]:
    return {"path": path, "etag": f'"{path}"', "body": b"x" * size, "headers": [["content-type", "text/html"]],
            "headers_304": [["etag", f'"{path}"']]}


async def test_pushed_pages_of_every_worker_share_one_budget() -> None:
    budget = Budget(10 << 20)
    a, b = client(budget), client(budget)
    a.apply_pages({"reset": True, "pages": [page(f"/a{i}", 1 << 20) for i in range(6)]})
    b.apply_pages({"reset": True, "pages": [page(f"/b{i}", 1 << 20) for i in range(6)]})
    assert budget.used <= 10 << 20
    assert set(b.pages) == {f"/b{i}" for i in range(6)}  # the newest are kept, a's oldest went first
    assert set(a.pages) == {"/a3", "/a4", "/a5"}
    a.touch_page(a.pages["/a3"])
    b.apply_pages({"pages": [page("/b6", 1 << 20)]})
    assert "/a3" in a.pages and "/a4" not in a.pages  # touched: not the least recently used any more
    a.apply_pages({"pages": [page("/huge", 11 << 20), {"path": "/a3", "drop": True}]})
    assert "/huge" not in a.pages and "/a3" not in a.pages  # over the whole budget: answered by the worker
    a.apply_pages({"reset": True, "pages": [page("/fresh", 1000)]})
    assert set(a.pages) == {"/fresh"}
    b.release()
    a.release()
    assert budget.used == 0


async def test_a_token_is_kept_once_the_worker_says_its_session_is_live() -> None:
    ours, theirs = channel_pair()
    w = client(Budget(1 << 20), ours)
    live, _ = make_token(SECRET, "c" * 26, 1, "user", "live", 3600)
    forged, _ = make_token(SECRET, "c" * 26, 1, "user", "forged", 3600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(theirs.run_writer)
        nursery.start_soon(w.run_reader)
        for token, accepted in ((live, True), (forged, False)):
            exchange = await w.send_request((token, w.tokens.verify(token)), cenv="c" * 26, method="GET", path="/auth/me",
                                            query="", headers=[], body=b"", client="", scheme="http",
                                            identity={"confirm": True})
            req = await theirs.receive()
            assert isinstance(req, proto.Request)
            if accepted:
                theirs.send_nowait(proto.Notice("session", {"id": req.id}))
            theirs.send_nowait(proto.Response(req.id, 200 if accepted else 401, [], b""))
            await exchange.first()
            exchange.close()
            assert (w.tokens.cached(token) is not None) is accepted
        theirs.send_nowait(proto.Notice("session", {"id": 999}))  # for no request in flight: nothing happens
        await w.aclose()
        await theirs.aclose()
