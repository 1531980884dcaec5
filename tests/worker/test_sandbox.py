"""The worker sandbox (wce/worker/sandbox/): its seccomp program, run through a BPF interpreter for
each architecture it supports, and everything a worker does, done inside the sandbox in a forked
child (tests/e2e/test_sandbox.py tries what it must not do, from real workers)."""

from __future__ import annotations

import errno
import json
import os
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from wce.config import ServerConfig
from wce.core import auth, backup, cenv, db
from wce.core.ids import new_id
from wce.worker import sandbox
from wce.worker.sandbox import seccomp

ALLOW, EPERM, ENOSYS = "allow", "EPERM", "ENOSYS"


def run_filter(prog: bytes, nr: int, arch: int, *args: int) -> str:
    """What the program answers for one system call (classic BPF, the subset it uses)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:
            acc &= k
        elif code in (0x15, 0x35, 0x45):
            hit = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += jt if hit else jf
        elif code == 0x06:
            if k == seccomp.RET_ALLOW:
                return ALLOW
            return errno.errorcode[k & 0xFFFF]
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_the_seccomp_program_answers_as_documented(machine: str) -> None:
    prog = seccomp.program(machine)
    assert prog is not None
    arch, nr = seccomp.ARCHES[machine]

    def answer(name: str, *args: int) -> str:
        return run_filter(prog, nr[name], arch, *args)

    for name in seccomp.DENIED:
        if name in nr:
            assert answer(name) == EPERM, name
    assert answer("socket", 2, 1) == EPERM  # AF_INET
    assert answer("socket", 10, 1) == EPERM  # AF_INET6
    assert answer("socket", 1, 2) == EPERM  # AF_UNIX datagrams (sendto reaches any named socket)
    assert answer("socket", 1, 1 | 0o2000000 | 0o4000) == ALLOW  # AF_UNIX stream, CLOEXEC|NONBLOCK
    assert answer("socketpair", 1, 1) == ALLOW and answer("socketpair", 2, 1) == EPERM
    assert answer("clone", 0x003D0F00) == ALLOW  # pthread_create's flags
    assert answer("clone", 0x01200011) == ALLOW  # fork()
    for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000):  # NEWUSER, NEWPID, NEWNET, NEWNS
        assert answer("clone", 0x01200011 | flag) == EPERM
    assert answer("clone3") == ENOSYS
    assert answer("ioctl", 2, 0x5412) == EPERM and answer("ioctl", 2, 0x5401) == ALLOW  # TIOCSTI; TCGETS
    for other in (0, 1, 3, 63, 202, 232, 281 if machine == "x86_64" else 63):  # read, write, close, futex...
        if other not in nr.values():
            assert run_filter(prog, other, arch) == ALLOW
    assert run_filter(prog, 0, 0x40000003) == EPERM  # i386 (int 0x80), or arm32 compat: another ABI
    if machine == "x86_64":
        assert run_filter(prog, 0x40000000 + 59, arch) == EPERM  # x32 execve


def test_status_is_reported_in_one_line() -> None:
    assert sandbox.Status(True, 7, True).line() == "wce: worker sandbox: Landlock on (ABI 7), seccomp on"
    off = sandbox.Status(True, 0, False, "this kernel has no Landlock: ENOSYS", "prctl(PR_SET_SECCOMP): Invalid argument")
    assert off.to_dict() == {"landlock": "off (this kernel has no Landlock: ENOSYS)",
                             "seccomp": "off (prctl(PR_SET_SECCOMP): Invalid argument)"}
    assert sandbox.Status(False).to_dict()["landlock"] == "off (--no-worker-sandbox)"


def in_sandboxed_child(config: ServerConfig, cenv_id: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; in the child enter the worker sandbox, run fn, send back its result (or the error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            status = sandbox.enter(config, cenv_id)
            out = {"status": status.to_dict(), **fn()}
        except BaseException:
            out = {"error": traceback.format_exc()}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    raw = b""
    while chunk := os.read(r, 65536):
        raw += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(raw)
    assert "error" not in result, result.get("error")
    return result


@pytest.fixture
def two_cenvs(tmp_path: Path) -> tuple[ServerConfig, str, str]:
    config = ServerConfig(data=str(tmp_path / "data"), run_dir=str(tmp_path / "run"))
    config.data_path.mkdir()
    config.prepare_runtime_path()
    a, b = new_id(), new_id()
    for c in (a, b):
        cenv.create(config.data_path, c, "admin", auth.hash_password("correct horse"), ip="test")
    return config, a, b


def test_a_sandboxed_worker_still_does_all_its_work(two_cenvs: tuple[ServerConfig, str, str]) -> None:
    config, a, _ = two_cenvs
    lazy = next(m for m in ("xml.dom.minidom", "wave", "colorsys", "mailbox", "tabnanny") if m not in sys.modules)

    def work() -> dict[str, Any]:
        from wce.worker.scripting import compile_in_child

        conn = db.connect(str(config.data_path / f"{a}.sqlite"))
        out: dict[str, Any] = {"temp_store": conn.pragma("temp_store")}
        # a sort and an index far past SQLite's page cache: temporary storage, in memory
        with conn:
            conn.execute("CREATE TABLE big(x)")
            conn.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100000) "
                         "INSERT INTO big SELECT randomblob(100) FROM r")
            conn.execute("CREATE INDEX big_x ON big(x)")
        out["sorted"] = sum(1 for _ in conn.execute("SELECT x FROM big ORDER BY x DESC"))
        __import__(lazy)  # code imported late
        fd, size = backup.open_snapshot(config.data_path, a, sandbox.scratch_path(config, a))  # GET export
        out["export"] = os.pread(fd, 16, 0).decode("latin-1")
        os.close(fd)
        out["scratch_left"] = os.listdir(sandbox.scratch_path(config, a))
        compile_in_child("def handle_request(ctx):\n    return 1\n", "endpoint")  # a forked child, same sandbox
        hashed: list[str] = []
        t = threading.Thread(target=lambda: hashed.append(auth.hash_password("in a thread")))  # argon2
        t.start()
        t.join()
        out["hashed"] = bool(hashed)
        conn.close()
        return out

    before = set(os.listdir(config.data_path))
    out = in_sandboxed_child(config, a, work)
    assert out["temp_store"] == 2 and out["sorted"] == 100000 and out["hashed"]
    assert out["export"] == "SQLite format 3\x00" and out["scratch_left"] == []
    assert set(os.listdir(config.data_path)) - before <= {".scratch", f"{a}.sqlite-wal", f"{a}.sqlite-shm"}


def test_inside_the_sandbox_other_cenvs_are_out_of_reach(two_cenvs: tuple[ServerConfig, str, str]) -> None:
    config, a, b = two_cenvs
    (config.runtime_path / f"{b}.lock").touch()  # as its worker leaves it
    status = sandbox.probe(config)
    if not status.landlock_abi:
        pytest.skip("this kernel has no Landlock")

    def attempt(fn: Callable[[], object]) -> str:
        try:
            fn()
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]
        except apsw.CantOpenError:
            return "cannot open"
        return "allowed"

    def work() -> dict[str, Any]:
        other = str(config.data_path / f"{b}.sqlite")
        return {
            "read": attempt(lambda: os.close(os.open(other, os.O_RDONLY))),
            "wal": attempt(lambda: os.close(os.open(f"{other}-wal", os.O_RDWR | os.O_CREAT, 0o600))),
            "unlink": attempt(lambda: os.unlink(other)),
            "rename": attempt(lambda: os.rename(other, config.data_path / "mine.sqlite")),
            "truncate": attempt(lambda: os.truncate(other, 0)),
            "chmod": attempt(lambda: os.chmod(other, 0o666)),
            "lock": attempt(lambda: os.close(os.open(config.runtime_path / f"{b}.lock", os.O_RDWR))),
            "sqlite": attempt(lambda: db.connect(other).execute("SELECT 1").fetchall()),
        }

    out = in_sandboxed_child(config, a, work)
    assert out["read"] == out["wal"] == out["unlink"] == out["rename"] == "EACCES"
    assert out["lock"] == "EACCES"
    assert out["sqlite"] == "cannot open"
    assert out["truncate"] == ("EPERM" if status.seccomp else "EACCES")  # seccomp comes first; Landlock ABI 3
    if status.seccomp:
        assert out["chmod"] == "EPERM"  # Landlock has no right for it
    assert os.stat(config.data_path / f"{b}.sqlite").st_size > 0
