"""What a tenant can make a gateway hold is bounded (findings M1, L3, M2 and M3 of the 2026-12
review), against a real server: gateway RSS is read from /proc before and after each attack.

RSS bounds carry slack (the allocator keeps what it freed, a first request warms caches), and no
assertion depends on how fast the machine is: waits have generous deadlines. `WCE_TEST_PUSHED_PAGES`
(default 72) sets how many ~1 MiB public pages the page-budget test creates; run it with 1000 and
`-s` for the figures of the closing note (`WCE_TEST_PAGE_BUDGET_MB`, default 16, sets the budget).
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import socket
import struct
import termios
import time
from pathlib import Path

import httpx
import pytest
import trio

from support import RawClient, Server, admin_cenv, bearer, sql, start_server

MiB = 1 << 20
BIG_PAGE = {"template": "{{#q}}{{s}}{{/q}}", "queries": {"q": "SELECT hex(randomblob(520000)) AS s"}}
BIG_PAGE_BYTES = 1_040_000


def rss(srv: Server) -> int:
    """Resident memory of the server's gateway processes, in bytes."""
    total = 0
    for pid in srv.gateways():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


async def add_big_pages(client: httpx.AsyncClient, cenv_id: str, token: str, paths: list[str]) -> None:
    for path in paths:
        r = await client.post(f"/{cenv_id}/api/pages", headers=bearer(token), json={"path": path, **BIG_PAGE})
        assert r.status_code == 201, r.text


def report(what: str, before: int, after: int) -> None:
    print(f"\n{what}: gateway RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB (+{(after - before) / MiB:.1f})")


# ---------------------------------------------------------------------------------------- M1 + L3

BUDGET_MB = int(os.environ.get("WCE_TEST_PAGE_BUDGET_MB", "16"))


async def test_pushed_pages_stay_within_the_gateways_budget(tmp_path: Path) -> None:
    """M1: many ~1 MiB public pages over several cenvs; the gateway holds at most its budget, and
    every page is still answered (those not in the budget by their worker)."""
    total = int(os.environ.get("WCE_TEST_PUSHED_PAGES", "72"))
    cenvs = max(6, math.ceil(total / 100))  # a worker's render cache holds its pages: ~100 MiB each
    per_cenv = total // cenvs
    srv = start_server(tmp_path, "--memory-mb", "1024", "--idle-timeout", "600",
                       env={"WCE_PAGE_CACHE_MB": str(BUDGET_MB)})
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
            made = [await admin_cenv(client) for _ in range(cenvs)]
            for c in made:  # every worker up, with a small page served once: the gateway is warm
                await client.post(c.url("/api/pages"), headers=bearer(c.admin), json={"path": "/small", "template": "hi"})
                assert (await client.get(c.url("/small"))).text == "hi"
            before = rss(srv)
            start = time.monotonic()
            async with trio.open_nursery() as nursery:
                for c in made:
                    nursery.start_soon(add_big_pages, client, c.id, c.admin, [f"/p{i}" for i in range(per_cenv)])
            after = rss(srv)
            report(f"{cenvs * per_cenv} pushed pages of {BIG_PAGE_BYTES} bytes in {cenvs} cenvs "
                   f"({time.monotonic() - start:.0f} s), budget {BUDGET_MB} MiB", before, after)
            assert after - before < (BUDGET_MB + 24) * MiB

            # every page is answered, whether the gateway still holds it or not
            for c in made:
                for path in ("/p0", f"/p{per_cenv - 1}"):
                    r = await client.get(c.url(path))
                    assert r.status_code == 200 and len(r.content) == BIG_PAGE_BYTES, (c.id, path, r.status_code)
    finally:
        srv.stop()


def answered_within(raw: RawClient, seconds: float) -> bool:
    raw.sock.settimeout(seconds)
    try:
        return bool(raw.sock.recv(1, socket.MSG_PEEK))
    except TimeoutError:
        return False
    finally:
        raw.sock.settimeout(60)


async def test_evicted_pages_are_answered_by_their_worker(tmp_path: Path) -> None:
    """M1: the least recently used pages leave the budget; the gateway then asks their worker."""
    srv = start_server(tmp_path, "--memory-mb", "512", "--idle-timeout", "600",
                       env={"WCE_PAGE_CACHE_MB": "8"})  # 2 MiB a cenv, 8 for all
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            old = await admin_cenv(client)
            await add_big_pages(client, old.id, old.admin, ["/a"])
            for _ in range(4):  # 8 more pages of ~1 MiB after old's: old's is the least recently used
                c = await admin_cenv(client)
                await add_big_pages(client, c.id, c.admin, ["/a", "/b"])
            new = await admin_cenv(client)
            await add_big_pages(client, new.id, new.admin, ["/a"])

        # with the workers stopped, the gateway still answers what it holds, and only that
        for p in srv.workers():
            os.kill(p, signal.SIGSTOP)
        try:
            recent = RawClient(srv.url)
            status, _, body = recent.request("GET", new.url("/a"))  # in the budget: no worker needed
            assert status == 200 and len(body) == BIG_PAGE_BYTES
            evicted = RawClient(srv.url)
            evicted.send("GET", old.url("/a"))
            assert not answered_within(evicted, 2.0)  # waits for its (stopped) worker
        finally:
            for p in srv.workers():
                os.kill(p, signal.SIGCONT)
        status, _, body = evicted.receive()
        assert status == 200 and len(body) == BIG_PAGE_BYTES
        recent.close()
        evicted.close()
    finally:
        srv.stop()


async def test_more_than_a_frame_of_pages_survives_a_reconnect(tmp_path: Path) -> None:
    """L3: a cenv with more public pages than one 16 MiB frame holds keeps serving after its
    gateway reconnects (the reset Notice comes in pieces)."""
    args = ("--memory-mb", "1024", "--idle-timeout", "600")
    env = {"WCE_PAGE_CACHE_MB": "256"}  # a cenv may push up to 64 MiB: more than one frame
    srv = start_server(tmp_path, *args, env=env)
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            c = await admin_cenv(client)
            await add_big_pages(client, c.id, c.admin, [f"/p{i}" for i in range(20)])
            assert (await client.get(c.url("/p0"))).status_code == 200
    finally:
        assert srv.stop() == 0
    srv = start_server(tmp_path, *args, env=env)  # the worker starts with every page rendered: all pushed at once
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            r = await client.get(c.url("/p19"))
            assert r.status_code == 200 and len(r.content) == BIG_PAGE_BYTES, (r.status_code, r.text[:200])
            assert (await client.get(c.url("/auth/me"), headers=bearer(c.admin))).status_code == 200
    finally:
        srv.stop()
    assert not any("exceeds" in line for line in srv.log), [line for line in srv.log if "exceeds" in line]


# ---------------------------------------------------------------------------------------------- M2


async def test_forged_tokens_do_not_fill_the_gateway(tmp_path: Path) -> None:
    """M2: an owner forges validly signed tokens with its own secret (GET export gives it); none
    names a live session, so the gateway keeps none of them."""
    from wce.core.auth import make_token

    n = int(os.environ.get("WCE_TEST_FORGED_TOKENS", "5000"))
    srv = start_server(tmp_path, "--idle-timeout", "600")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            c = await admin_cenv(client)
            assert (await client.get(c.url("/auth/me"), headers=bearer(c.admin))).status_code == 200
            secret = bytes.fromhex(sql(srv.data, c.id, "SELECT value FROM _wce_meta WHERE key = 'jwt_secret'")[0][0])
            before = rss(srv)
            statuses: dict[int, int] = {}

            async def forge(start: int, count: int) -> None:
                async with httpx.AsyncClient(base_url=srv.url, timeout=60) as own:
                    for i in range(start, start + count):
                        token, _ = make_token(secret, c.id, 1, "r" * 600, f"{i:08d}" + "j" * 2200, 3600)
                        r = await own.get(c.url("/auth/me"), headers=bearer(token))
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

            async with trio.open_nursery() as nursery:
                for k in range(8):
                    nursery.start_soon(forge, k * (n // 8), n // 8)
            after = rss(srv)
            report(f"{n // 8 * 8} forged tokens", before, after)
            assert statuses == {401: n // 8 * 8}
            assert after - before < 12 * MiB
            # the real session still works, from the cache or not
            assert (await client.get(c.url("/auth/me"), headers=bearer(c.admin))).status_code == 200
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- M3

BIG_ANSWER = 15 * MiB
BIG_ENDPOINT = f"def handle_request(ctx):\n    return response(body='z' * {BIG_ANSWER}, content_type='text/plain')\n"


def slow_reader(srv: Server, path: str) -> socket.socket:
    """A client with a tiny receive buffer that sends one GET and then reads nothing."""
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    return s


def unread(s: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


async def big_endpoint(srv: Server) -> str:
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        c = await admin_cenv(client)
        r = await client.post(c.url("/api/endpoints"), headers=bearer(c.admin),
                              json={"method": "GET", "path": "/big", "source": BIG_ENDPOINT, "access": "public"})
        assert r.status_code == 201, r.text
        r = await client.get(c.url("/fn/big"))  # read at once: the whole answer, and the gateway warm
        assert r.status_code == 200 and len(r.content) == BIG_ANSWER
        return c.url("/fn/big")


async def test_slow_readers_do_not_hold_whole_answers_in_the_gateway(tmp_path: Path) -> None:
    """M3: 8 clients that never read a 15 MiB answer cost the gateway far less than 8 x 15 MiB."""
    srv = start_server(tmp_path, "--memory-mb", "1024", "--idle-timeout", "600")
    socks: list[socket.socket] = []
    try:
        path = await big_endpoint(srv)
        before = rss(srv)
        socks = [slow_reader(srv, path) for _ in range(8)]
        deadline = time.monotonic() + 120
        while not all(unread(s) for s in socks):  # every answer has begun: its head is here
            assert time.monotonic() < deadline, [unread(s) for s in socks]
            await trio.sleep(0.1)
        peak = 0
        for _ in range(20):  # give the relays time to fill whatever they would hold
            peak = max(peak, rss(srv))
            await trio.sleep(0.1)
        report("8 slow readers of a 15 MiB answer", before, peak)
        assert peak - before < 40 * MiB
        for s in socks:
            s.close()
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            r = await client.get(path)
            assert r.status_code == 200 and len(r.content) == BIG_ANSWER
    finally:
        for s in socks:
            s.close()
        srv.stop()


def server_side_state(srv: Server, s: socket.socket) -> str | None:
    """The TCP state (hex, /proc/net/tcp) of the gateway's end of a client's connection."""
    local = s.getsockname()[1]
    server_port = s.getpeername()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if int(parts[1].split(":")[1], 16) == server_port and int(parts[2].split(":")[1], 16) == local:
            return parts[3]
    return None


async def test_a_client_that_reads_nothing_is_dropped(tmp_path: Path) -> None:
    """M3: a client that takes no byte for the send timeout is disconnected (its answer cut)."""
    srv = start_server(tmp_path, "--memory-mb", "1024", env={"WCE_SEND_TIMEOUT": "5"})
    try:
        path = await big_endpoint(srv)
        s = slow_reader(srv, path)
        deadline = time.monotonic() + 60
        while server_side_state(srv, s) == "01":  # ESTABLISHED
            assert time.monotonic() < deadline, "the gateway kept a client that reads nothing"
            await trio.sleep(0.2)
        s.settimeout(60)
        got = 0
        try:
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert 0 < got < BIG_ANSWER
        s.close()
    finally:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-s", "-q"])
