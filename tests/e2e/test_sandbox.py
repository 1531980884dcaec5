"""Boundary 9, the kernel sandbox around each worker (wce/worker/sandbox/), tried from inside real
workers: the server runs with WCE_SANDBOX_SELFTEST, so each worker, once sandboxed, tries what a
compromised one would and reports the error each attempt got."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import Server, bearer, login, new_cenv, start_server
from wce.config import ServerConfig
from wce.worker.sandbox import probe, seccomp
from wce.worker.sandbox.selftest import ENV as SELFTEST

HOST = probe(ServerConfig())  # what this kernel gives workers
DENIED = {"EACCES", "EPERM"}
FILES = ("other_cenv", "list_data", "create_in_data", "parent_environ")  # Landlock's
PROCESSES = ("tcp_connect", "exec")  # both's: Landlock (ABI 4 for TCP) and seccomp
SECCOMP_ONLY = ("unix_connect_forkserver", "read_parent_memory")


def report(path: Path, cenv: str, timeout: float = 10) -> dict[str, Any]:
    """The selftest line the worker of `cenv` wrote."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["cenv"] == cenv:
                    return entry
        time.sleep(0.02)
    raise AssertionError(f"no selftest report from the worker of {cenv}")


async def start_worker_of(srv: Server, selftest: Path) -> tuple[str, str, dict[str, Any]]:
    """Two cenvs (so another cenv's file is there), a request that starts the first one's worker:
    (cenv, its admin token, its worker's selftest report)."""
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        a = await new_cenv(client)
        await new_cenv(client)
        token = await login(client, a)
        assert (await client.get(f"/{a}/api/tables", headers=bearer(token))).status_code == 200
    return a, token, report(selftest, a)


@pytest.mark.skipif(not (HOST.landlock_abi or HOST.seccomp), reason="this kernel has neither Landlock nor seccomp")
async def test_a_worker_cannot_open_other_cenvs_connect_or_exec(tmp_path: Path) -> None:
    selftest = tmp_path / "selftest.jsonl"
    srv = start_server(tmp_path, env={SELFTEST: str(selftest)})
    try:
        a, token, entry = await start_worker_of(srv, selftest)
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            health = (await client.get("/healthz")).json()
            # the worker still does all its own work: here an export, made in its scratch folder
            r = await client.get(f"/{a}/api/export", headers=bearer(token))
            assert r.status_code == 200 and r.content.startswith(b"SQLite format 3\x00")
    finally:
        srv.stop()
    checks = entry["checks"]
    assert checks["own_cenv"] == "allowed"
    assert entry["status"] == health["sandbox"] == HOST.to_dict()
    assert any(line.startswith("wce: worker sandbox: Landlock ") for line in srv.log)
    if HOST.landlock_abi:
        assert {k: checks[k] for k in FILES} == {k: "EACCES" for k in FILES}
    if HOST.landlock_abi >= 6:
        assert checks["signal_parent"] == "EPERM"
    if HOST.seccomp:
        assert {k: checks[k] for k in PROCESSES + SECCOMP_ONLY} == {k: "EPERM" for k in PROCESSES + SECCOMP_ONLY}
    elif HOST.landlock_abi >= 4:
        assert {checks[k] for k in PROCESSES} == {"EACCES"}
    assert not [p for p in srv.data.iterdir() if p.name in ("planted",) or p.name.endswith(".exporting")]
    assert not (srv.data / ".scratch" / a).exists()  # emptied by the export, removed by the fork server


async def test_without_the_sandbox_the_same_attempts_succeed(tmp_path: Path) -> None:
    """What the test above guards against: with `--no-worker-sandbox`, a worker reads another
    cenv's file, runs a program and connects to the fork server."""
    selftest = tmp_path / "selftest.jsonl"
    srv = start_server(tmp_path, "--no-worker-sandbox", env={SELFTEST: str(selftest)})
    try:
        _, _, entry = await start_worker_of(srv, selftest)
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            health = (await client.get("/healthz")).json()
    finally:
        srv.stop()
    checks = entry["checks"]
    assert {k: checks[k] for k in ("own_cenv", "other_cenv", "list_data", "exec", "unix_connect_forkserver")} == \
        dict.fromkeys(("own_cenv", "other_cenv", "list_data", "exec", "unix_connect_forkserver"), "allowed")
    assert checks["tcp_connect"] == "ECONNREFUSED"  # it reached the network stack
    assert health["sandbox"] == {"landlock": "off (--no-worker-sandbox)", "seccomp": "off (--no-worker-sandbox)"}


def _hiding(parts: tuple[str, ...]) -> str:
    """A seccomp program (hex) that makes this kernel look as if it lacked `parts`: the landlock
    system calls answer ENOSYS, prctl(PR_SET_SECCOMP) EINVAL (a kernel without seccomp filters)."""
    ld, jeq, ret = 0x20, 0x15, 0x06
    nr = {"x86_64": {"prctl": 157}, "aarch64": {"prctl": 167}}[platform.machine()]
    p: list[Any] = [(ld, 0, None, None)]
    if "landlock" in parts:
        p += [(jeq, n, "enosys", None) for n in (444, 445, 446)]
    if "seccomp" in parts:
        p += [(jeq, nr["prctl"], None, "allow"), (ld, 16, None, None), (jeq, 22, "einval", "allow")]
    p += ["allow", (ret, seccomp.RET_ALLOW, None, None),
          "enosys", (ret, seccomp.RET_ERRNO | 38, None, None), "einval", (ret, seccomp.RET_ERRNO | 22, None, None)]
    return seccomp.assemble(p).hex()


SITECUSTOMIZE = '''
import ctypes, os
prog = os.environ.get("WCE_TEST_KERNEL_FILTER")
if prog and "Seccomp:\\t0" in open("/proc/self/status").read():  # once: children inherit it
    data = bytes.fromhex(prog)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(data, len(data))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    fprog = Fprog(len(data) // 8, ctypes.cast(buf, ctypes.c_void_p))
    assert libc.prctl(22, ctypes.c_ulong(2), ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
'''


@pytest.mark.skipif(not HOST.seccomp or platform.machine() not in ("x86_64", "aarch64"),
                    reason="needs seccomp to make the kernel look older")
@pytest.mark.parametrize("missing", [("landlock",), ("seccomp",), ("landlock", "seccomp")])
async def test_a_kernel_without_landlock_or_seccomp_still_serves_and_says_so(tmp_path: Path,
                                                                             missing: tuple[str, ...]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    selftest = tmp_path / "selftest.jsonl"
    env = {"PYTHONPATH": str(site), "WCE_TEST_KERNEL_FILTER": _hiding(missing), SELFTEST: str(selftest)}
    srv = start_server(tmp_path, env=env)
    try:
        _, _, entry = await start_worker_of(srv, selftest)  # it serves
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            health = (await client.get("/healthz")).json()["sandbox"]
    finally:
        srv.stop()
    lines = [line for line in srv.log if line.startswith("wce: worker sandbox:")]
    assert len(lines) == 1  # logged once, at start
    checks = entry["checks"]
    if "landlock" in missing:
        assert health["landlock"] == "off (this kernel has no Landlock: ENOSYS)"
        assert "Landlock off (this kernel has no Landlock: ENOSYS)" in lines[0]
        assert checks["other_cenv"] == "allowed"
    else:
        assert health["landlock"].startswith("on (ABI ") and checks["other_cenv"] == "EACCES"
    if "seccomp" in missing:
        assert health["seccomp"].startswith("off (prctl(PR_SET_SECCOMP): ") and "seccomp off (" in lines[0]
        assert checks["unix_connect_forkserver"] == "allowed"
        if "landlock" not in missing and HOST.landlock_abi >= 4:  # Landlock alone still stops these
            assert checks["exec"] == checks["tcp_connect"] == "EACCES"
    else:
        assert health["seccomp"] == "on" and checks["exec"] == "EPERM"
    if missing == ("landlock", "seccomp"):
        assert checks["exec"] == "allowed"


async def test_a_closing_worker_leaves_no_socket_name_and_gets_a_successor(tmp_path: Path) -> None:
    """The sandbox lets a worker remove no name in the run folder: the fork server removes it."""
    srv = start_server(tmp_path, "--idle-timeout", "0.5")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            a = await new_cenv(client)
            token = await login(client, a)
            sock = ServerConfig(data=str(srv.data)).runtime_path / f"{a}.sock"
            assert sock.exists() and len(srv.workers()) == 1
            deadline = time.monotonic() + 10
            while (sock.exists() or srv.workers()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not sock.exists() and srv.workers() == []
            assert (await client.get(f"/{a}/auth/me", headers=bearer(token))).status_code == 200
            assert sock.exists()
    finally:
        srv.stop()


def test_the_shipped_unit_lets_workers_build_their_sandbox() -> None:
    """systemd's @system-service leaves out the landlock system calls (and seccomp, though prctl,
    which we use, is in): the unit allows them, or every worker would run without Landlock."""
    allowed = " ".join(line.split("=", 1)[1] for line in (Path(__file__).parents[2] / "deploy" / "wce.service")
                       .read_text().splitlines() if line.startswith("SystemCallFilter=") and "=~" not in line)
    for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
        assert name in allowed.split()


def test_the_sandbox_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from wce.cli import _serve_args

    def parsed(*args: str) -> bool:
        p = argparse.ArgumentParser()
        _serve_args(p)
        return bool(p.parse_args(args).worker_sandbox)

    monkeypatch.delenv("WCE_WORKER_SANDBOX", raising=False)
    assert ServerConfig().worker_sandbox and parsed()
    assert not parsed("--no-worker-sandbox")
    monkeypatch.setenv("WCE_WORKER_SANDBOX", "0")
    assert not parsed()
