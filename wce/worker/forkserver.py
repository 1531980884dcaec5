"""The fork server (zygote): imports the heavy modules once, then forks a worker per cenv on request.

Started by the gateway before its event loop, with MALLOC_ARENA_MAX=1. It never runs trio itself,
so a fork here copies no event loop, threads or locks: a cold cenv costs a fork (~15 ms) instead
of a fresh interpreter (~130 ms), and workers share the imported code copy-on-write.

Requests arrive on a listening Unix socket, one per connection, as one frame of msgpack:
    {"op": "spawn", "cenv": ID}      + the worker's listening socket as SCM_RIGHTS -> {"ok", "pid"}
    {"op": "create", "cenv": ID, "username", "password", "ip"}   -> {"ok"} or {"ok": false, "code", "message"}
    {"op": "import", "cenv": ID, "username", "password", "ip"} + the uploaded file as SCM_RIGHTS
                                                                  -> {"ok"} or {"ok": false, "code", "message"}
`create` and `import` run in a short-lived forked child (argon2 takes ~50 ms; checking a file takes
longer), which answers on the connection.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import msgpack

from wce.config import ServerConfig
from wce.proto.framing import FrameDecoder, frame

# Imported here so that forked workers find them loaded (the point of the zygote).
import apsw  # noqa: F401, E402
import starlark  # noqa: F401, E402
import trio  # noqa: F401, E402

from wce.core import auth, backup, cenv  # noqa: E402
from wce.core.errors import WceError  # noqa: E402
from wce.worker import server  # noqa: E402

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_children: set[int] = set()


class _Stop(Exception):
    pass


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when our parent exits, so nothing outlives its owner."""
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _reap(signum: int, frame_: Any) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _children.discard(pid)


def _stop(signum: int, frame_: Any) -> None:
    raise _Stop


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    decoder = FrameDecoder(max_size=1 << 20)
    fds: list[int] = []
    while True:
        data, got, _, _ = socket.recv_fds(conn, 65536, 2)
        fds += got
        if not data:
            raise ConnectionError("fork server client went away")
        frames = decoder.feed(data)
        if frames:
            msg = msgpack.unpackb(frames[0], raw=False)
            if not isinstance(msg, dict):
                raise ValueError("bad request")
            return msg, fds


def _reply(conn: socket.socket, msg: dict[str, Any]) -> None:
    conn.sendall(frame(msgpack.packb(msg, use_bin_type=True)))


def _after_fork(listener: socket.socket, conn: socket.socket | None) -> None:
    """In a new child: default signals, die with the fork server, fresh random state."""
    listener.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGTERM)
    random.seed()


def _spawn(config: ServerConfig, listener: socket.socket, conn: socket.socket, msg: dict[str, Any],
           fds: list[int]) -> None:
    cenv_id = msg.get("cenv")
    if len(fds) != 1 or not isinstance(cenv_id, str):
        for fd in fds:
            os.close(fd)
        _reply(conn, {"ok": False, "code": "internal", "message": "bad spawn request"})
        return
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            conn.close()
            _after_fork(listener, None)
            code = server.run_worker(fds[0], cenv_id, config)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _children.add(pid)
    os.close(fds[0])
    _reply(conn, {"ok": True, "pid": pid})


def _job(config: ServerConfig, listener: socket.socket, conn: socket.socket, what: str,
         work: Callable[[], None]) -> None:
    """Run one cenv-making job (create, import) in a forked child under the memory cap; the child
    answers on the connection: {"ok"} or the domain error, never a traceback."""
    pid = os.fork()
    if pid != 0:
        _children.add(pid)
        return
    code = 0
    try:
        _after_fork(listener, conn)
        from wce.worker import limits

        limits.apply_memory(config.memory_mb)
        try:
            work()
            _reply(conn, {"ok": True})
        except WceError as exc:
            _reply(conn, {"ok": False, "code": exc.code, "message": exc.message})
    except BaseException:
        traceback.print_exc()
        code = 1
        try:
            _reply(conn, {"ok": False, "code": "internal", "message": f"could not {what} the cenv"})
        except OSError:
            pass
    finally:
        os._exit(code)


def _create(config: ServerConfig, listener: socket.socket, conn: socket.socket, msg: dict[str, Any]) -> None:
    def work() -> None:
        username = auth.check_username(msg.get("username"))
        password = auth.check_password(msg.get("password"))
        config.data_path.mkdir(parents=True, exist_ok=True)
        cenv.create(config.data_path, msg["cenv"], username, auth.hash_password(password), ip=msg.get("ip"))

    _job(config, listener, conn, "create", work)


def _import(config: ServerConfig, listener: socket.socket, conn: socket.socket, msg: dict[str, Any],
            fds: list[int]) -> None:
    """Check the uploaded file (an open descriptor from the gateway) and install it, in a child."""
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        _reply(conn, {"ok": False, "code": "internal", "message": "bad import request"})
        return

    def work() -> None:
        username, password = msg.get("username"), msg.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise WceError("bad import request")
        backup.import_file(config.data_path, f"/proc/self/fd/{fds[0]}", msg["cenv"],
                           credentials=(username, password), ip=msg.get("ip"))

    try:
        _job(config, listener, conn, "import", work)
    finally:
        os.close(fds[0])  # the parent's copy (the child exits inside _job)


def serve(listen_fd: int, config: ServerConfig) -> None:
    """Accept requests until SIGTERM (or the gateway's death), then stop every child."""
    listener = socket.socket(fileno=listen_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, _stop)
    die_with_parent(signal.SIGTERM)
    gc.collect()
    gc.freeze()
    try:
        while True:
            conn, _ = listener.accept()
            try:
                conn.settimeout(5)
                msg, fds = _read_request(conn)
                op = msg.get("op")
                if op == "spawn":
                    _spawn(config, listener, conn, msg, fds)
                elif op == "create":
                    for fd in fds:
                        os.close(fd)
                    _create(config, listener, conn, msg)
                elif op == "import":
                    _import(config, listener, conn, msg, fds)
                else:
                    _reply(conn, {"ok": False, "code": "internal", "message": "unknown op"})
            except _Stop:
                raise
            except Exception:
                traceback.print_exc()
            finally:
                conn.close()
    except _Stop:
        pass
    finally:
        _stop_children(config.graceful_timeout)


def _stop_children(timeout: float) -> None:
    import time

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for pid in list(_children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            _children.discard(pid)
    deadline = time.monotonic() + timeout
    while _children and time.monotonic() < deadline:
        for pid in list(_children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                _children.discard(pid)
        time.sleep(0.02)
    for pid in list(_children):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: `python -m wce.worker.forkserver --fd N --config JSON`."""
    p = argparse.ArgumentParser()
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--config", required=True)
    args = p.parse_args(argv)
    serve(args.fd, ServerConfig.from_dict(json.loads(args.config)))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
