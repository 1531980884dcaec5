"""`WCE_SANDBOX_SELFTEST=FILE`, for tests: each worker, once in its sandbox, tries what a
compromised one would, and appends the error each attempt got (or "allowed") to FILE as one JSON
line. Set by the test that starts the server (tests/e2e/test_sandbox.py); no tenant can set it."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from wce.config import ServerConfig
from wce.core.ids import path_for

from .libc import check, libc

ENV = "WCE_SANDBOX_SELFTEST"


class Selftest:
    """Opened before the sandbox (the report file, another cenv's name), run inside it."""

    def __init__(self, config: ServerConfig, cenv_id: str, out: int, other: str | None) -> None:
        self.config, self.cenv_id, self.out, self.other = config, cenv_id, out, other

    @classmethod
    def begin(cls, config: ServerConfig, cenv_id: str) -> Selftest | None:
        """None unless the variable is set."""
        target = os.environ.get(ENV)
        if not target:
            return None
        out = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        own = path_for(config.data_path, cenv_id).name
        others = sorted(p for p in os.listdir(config.data_path) if p.endswith(".sqlite") and p != own)
        return cls(config, cenv_id, out, str(config.data_path / others[0]) if others else None)

    def run(self, status: dict[str, str]) -> None:
        """Try each, write the line, close the report file."""
        data, run = self.config.data_path, self.config.runtime_path
        checks = {
            "own_cenv": _attempt(lambda: _read(str(path_for(data, self.cenv_id)))),
            "other_cenv": _attempt(lambda: _read(self.other)) if self.other else "no other cenv",
            "list_data": _attempt(lambda: os.listdir(data)),
            "create_in_data": _attempt(lambda: os.close(os.open(data / "planted", os.O_CREAT | os.O_WRONLY, 0o600))),
            "tcp_connect": _attempt(_tcp),
            "unix_connect_forkserver": _attempt(lambda: _unix(str(run / "forkserver.sock"))),
            "exec": _attempt(_exec),
            "parent_environ": _attempt(lambda: _read(f"/proc/{os.getppid()}/environ")),
            "signal_parent": _attempt(lambda: os.kill(os.getppid(), 0)),
            "read_parent_memory": _attempt(_read_parent_memory),
        }
        line: dict[str, Any] = {"cenv": self.cenv_id, "pid": os.getpid(), "status": status, "checks": checks}
        os.write(self.out, (json.dumps(line) + "\n").encode())
        os.close(self.out)


def _attempt(fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "allowed"


def _read(path: str) -> None:
    os.close(os.open(path, os.O_RDONLY))


def _tcp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", 9))


def _unix(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)


def _exec() -> None:
    """exec /bin/true in a child (a working exec would replace this worker)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.execv("/bin/true", ["true"])
        except OSError as exc:
            os._exit(100 + (exc.errno or 0))
        os._exit(99)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code > 100:
        raise OSError(code - 100, os.strerror(code - 100))


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _read_parent_memory() -> None:
    """process_vm_readv of 8 bytes at an address the fork server shares with us (None's)."""
    buf = ctypes.create_string_buffer(8)
    local, remote = _Iovec(ctypes.cast(buf, ctypes.c_void_p), 8), _Iovec(id(None), 8)
    fn = libc.process_vm_readv
    fn.restype = ctypes.c_ssize_t
    u = ctypes.c_ulong
    check(fn(os.getppid(), ctypes.byref(local), u(1), ctypes.byref(remote), u(1), u(0)), "process_vm_readv")
