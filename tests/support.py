"""Helpers shared by the tests: a real server in a subprocess, and process inspection."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def reaped(pid: int) -> bool:
    """True once the process is entirely gone (reaped): every thread has exited and its sockets are
    closed. A zombie leader is not enough: other threads may still hold the files open."""
    return not os.path.exists(f"/proc/{pid}")


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains text (the data folder identifies one server's processes)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes() and alive(int(entry)):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@dataclass
class Server:
    """A real `wce serve` (gateway + fork server + workers) on a free port and a temp data folder."""

    proc: subprocess.Popen[str]
    url: str
    data: Path
    log: list[str] = field(default_factory=list)

    @property
    def forkserver(self) -> int:
        kids = [p for p in children(self.proc.pid) if alive(p) and b"wce.worker.zygote" in _cmdline(p)]
        assert len(kids) == 1, kids
        return kids[0]

    def gateways(self) -> list[int]:
        """The gateway processes: the server itself, or with --gateways N > 1 its N children."""
        kids = [p for p in children(self.proc.pid) if alive(p) and b"wce.worker.zygote" not in _cmdline(p)]
        return kids or [self.proc.pid]

    def workers(self) -> list[int]:
        """Live worker pids (children of the fork server)."""
        return [p for p in children(self.forkserver) if alive(p)]

    def wait_workers(self, n: int, timeout: float = 10) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            w = self.workers()
            if len(w) == n or time.monotonic() > deadline:
                return w
            time.sleep(0.02)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code


def worker_of(server: Server, cenv: str, timeout: float = 30) -> int:
    """The live worker that has the cenv's file open (waiting up to timeout for one)."""
    name = f"/{cenv}.sqlite"
    deadline = time.monotonic() + timeout
    while True:
        for pid in server.workers():
            try:
                if any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(name) for fd in os.listdir(f"/proc/{pid}/fd")):
                    return pid
            except OSError:
                continue
        assert time.monotonic() < deadline, f"no worker has {cenv} open"
        time.sleep(0.05)


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """Start a server and wait until it listens."""
    data = tmp / "data"
    if "--gateways" not in args:  # one gateway process unless a test asks for more (tests/e2e/test_gateways.py)
        args = ("--gateways", "1", *args)
    cmd = [sys.executable, "-m", "wce", "--data", str(data), "serve", "--port", "0", "--new-per-hour", "10000", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"wce: listening on (http://\S+)", line)
        if m:
            srv = Server(proc, m.group(1), data, lines)
            # keep draining output so the server never blocks on a full pipe
            import threading

            threading.Thread(target=lambda: [srv.log.append(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return srv
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


async def new_cenv(client: httpx.AsyncClient, username: str = "admin", password: str = "correct horse") -> str:
    """Create a cenv through the public route; its id."""
    r = await client.post("/new", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    return str(r.json()["cenv"])


async def login(client: httpx.AsyncClient, cenv: str, username: str = "admin", password: str = "correct horse") -> str:
    """A bearer token."""
    r = await client.post(f"/{cenv}/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    client.cookies.clear()  # tests send credentials explicitly; an anonymous call must stay anonymous
    return str(r.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def sql(data: Path, cenv: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read (or write) a cenv file directly, as an operator would with sqlite3."""
    import apsw

    conn = apsw.Connection(str(data / f"{cenv}.sqlite"))
    conn.set_busy_timeout(5000)
    try:
        return list(conn.execute(query, args))
    finally:
        conn.close()


def assert_safe_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The contract's error shape, with nothing internal in it."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code:
        assert body["error"]["code"] == code, body
    text = json.dumps(body)
    for leak in ("Traceback", "/work", "/tmp", ".py", "$argon2", "jwt_secret"):
        assert leak not in text, text
    return body


@dataclass
class Cenv:
    """A cenv with its admin's token, and helpers to act as someone."""

    id: str
    admin: str  # the admin's bearer token

    def url(self, path: str) -> str:
        return f"/{self.id}{path}"


async def admin_cenv(client: httpx.AsyncClient) -> Cenv:
    """A fresh cenv and its admin's token."""
    cenv = await new_cenv(client)
    return Cenv(cenv, await login(client, cenv))


async def add_user(client: httpx.AsyncClient, c: Cenv, username: str, role: str = "user",
                   password: str = "user password") -> str:
    """Create a user through the admin API; their token."""
    r = await client.post(c.url("/api/users"), headers=bearer(c.admin),
                          json={"username": username, "password": password, "role": role})
    assert r.status_code == 201, r.text
    return await login(client, c.id, username, password)


def audit_count(data: Path, cenv: str) -> int:
    return int(sql(data, cenv, "SELECT count(*) FROM _wce_audit_log")[0][0])


def gateway_links(srv: Server, cenv: str) -> int:
    """Gateway connections the cenv's worker has accepted: the connected sockets that carry its
    socket's name in /proc/net/unix (state 03 = connected; the listener is 01)."""
    from wce.config import ServerConfig

    path = str(ServerConfig(data=str(srv.data)).runtime_path / f"{cenv}.sock")
    n = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 8 and parts[7] == path and parts[5] == "03":
            n += 1
    return n


async def burst(srv: Server, n: int, method: str, path: str, **kw: Any) -> list[httpx.Response]:
    """n requests at once, each on its own new connection (so they spread over the gateways)."""
    import trio

    out: list[httpx.Response] = []

    async def one() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            out.append(await c.request(method, path, **kw))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return out


async def link_every_gateway(srv: Server, cenv: str) -> None:
    """Make every gateway process connect to the cenv's worker (a gateway serves a cenv's cached
    pages only once it has a connection to its worker): fresh connections until all have."""
    want = len(srv.gateways())
    for _ in range(50):
        if gateway_links(srv, cenv) >= want:
            return
        await burst(srv, 8, "GET", f"/{cenv}/auth/me")
    raise AssertionError(f"only {gateway_links(srv, cenv)} of {want} gateways reached the worker")


class RawClient:
    """A bare HTTP/1.1 keep-alive connection (its own socket, so a test knows which gateway
    process took it: see `gateway_of`)."""

    def __init__(self, url: str) -> None:
        import socket

        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        self.send(method, path, headers, body)
        return self.receive()

    def send(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        head = [f"{method} {path} HTTP/1.1", "host: test", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def receive(self) -> tuple[int, dict[str, str], bytes]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            buf += chunk
        raw_head, rest = buf.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        size = int(hdrs.get("content-length", "0"))
        while len(rest) < size:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            rest += chunk
        return status, hdrs, rest[:size]

    def close(self) -> None:
        self.sock.close()


def gateway_of(srv: Server, client: RawClient) -> int | None:
    """The pid of the gateway process that accepted the client's connection (after a request)."""
    local = client.sock.getsockname()[1]
    server_port = client.sock.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if int(parts[1].split(":")[1], 16) == server_port and int(parts[2].split(":")[1], 16) == local:
            inode = parts[9]
    if inode is None:
        return None
    for pid in srv.gateways():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None
