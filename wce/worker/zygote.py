"""The fork server (zygote): imports the heavy modules once, then forks a worker per cenv on request.

Started by the gateway before its event loop, with MALLOC_ARENA_MAX=1. It never runs trio itself,
so a fork here copies no event loop, threads or locks: a cold cenv costs a fork (~15 ms) instead
of a fresh interpreter (~130 ms), and workers share the imported code copy-on-write.

It is also the one arbiter every gateway process shares: it knows which worker serves which cenv,
so however many gateways ask for a cenv at once, exactly one worker is started, and it keeps the
limits that must hold across gateways (cenvs created per client address).

Requests arrive on a listening Unix socket, one per connection, one frame each way: the messages
of wce.proto.zygote (Spawn, Fate, Admit, Create, Import; answered Spawned, Ended, Done or Refused).
Its client is the gateway's wce.gateway.zygote_client. `Create` and `Import` run in a short-lived
forked child (argon2 takes ~50 ms; checking a file takes longer), which answers on the connection.

A worker that begins closing says so first, on a pipe whose other end we keep (its sandbox lets
it remove no name in the run folder: wce.worker.sandbox); a spawn that finds it closing starts a
successor, which waits for the cenv's lock (`{run}/{ID}.lock`, held by a worker for its whole life)
before it opens the file: never two workers on one cenv. The name of a worker that exits without a
successor is removed here.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from wce.config import ServerConfig
from wce.process import die_with_parent
from wce.core.ids import is_id
from wce.core.throttle import SlidingWindow
from wce.proto import zygote
from wce.proto.errors import ProtocolError
from wce.proto.framing import FrameReader, frame

# Imported here so that forked workers find them loaded (the point of the zygote).
import apsw  # noqa: F401, E402
import starlark  # noqa: F401, E402
import trio  # noqa: F401, E402

from wce.core import auth, backup, cenv  # noqa: E402
from wce.core.errors import WceError  # noqa: E402
from wce.worker import crash_marker, fates  # noqa: E402
from wce.worker import sandbox, server  # noqa: E402

_children: set[int] = set()
# cenv -> (pid, inode of its socket name, our end of its closing pipe) of its newest worker
_workers: dict[str, tuple[int, int, int]] = {}
_asked_to_close: set[int] = set()  # workers sent SIGTERM by the cap, until reaped
_config = ServerConfig()  # the server's (set by serve)


class _Stop(Exception):
    pass


def _reap(signum: int, frame_: Any) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fates.reaped(pid, status)
        _forget(pid)


def _forget(pid: int) -> None:
    _children.discard(pid)
    _asked_to_close.discard(pid)
    for cenv_id, (wpid, ino, closing) in list(_workers.items()):
        if wpid == pid:
            del _workers[cenv_id]
            _drop_name(cenv_id, ino, closing)


def _drop_name(cenv_id: str, ino: int, closing: int) -> None:
    """A worker is gone and no successor took its place: remove its socket name (unless another's)
    and its scratch folder if empty, close its pipe."""
    os.close(closing)
    path = _config.runtime_path / f"{cenv_id}.sock"
    try:
        if os.stat(path).st_ino == ino:
            path.unlink()
    except OSError:
        pass
    try:
        os.rmdir(sandbox.scratch_path(_config, cenv_id))
    except OSError:
        pass


def _stop(signum: int, frame_: Any) -> None:
    raise _Stop


def _read_request(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The request's frame, and the descriptors sent with it (an upload's file)."""
    fds: list[int] = []

    def recv() -> bytes:
        data, got, _, _ = socket.recv_fds(conn, 65536, 2)
        fds.extend(got)
        return data

    return FrameReader(zygote.MAX_FRAME).read(recv), fds


def _reply(conn: socket.socket, msg: zygote.Reply) -> None:
    conn.sendall(frame(zygote.encode(msg)))


def _after_fork(listener: socket.socket, conn: socket.socket | None) -> None:
    """In a new child: default signals, die with the fork server, fresh random state, none of the
    other workers' pipes."""
    listener.close()
    for _, _, closing in _workers.values():
        os.close(closing)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})  # held by _fork
    die_with_parent(signal.SIGTERM)
    random.seed()
    fates.in_child(None, [])  # no other worker's crash marker


def _live_worker(config: ServerConfig, cenv_id: str) -> int | None:
    """The pid of cenv's worker if it is alive and still listening under its socket name."""
    known = _workers.get(cenv_id)
    if known is None:
        return None
    pid, ino, closing = known
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:  # dead, and SIGCHLD not handled yet
            fates.reaped(pid, status)
            _forget(pid)
            return None
    except ChildProcessError:
        _forget(pid)
        return None
    poll = select.poll()
    poll.register(closing, select.POLLIN)
    if poll.poll(0):
        return None  # closing (it wrote on its pipe): a successor waits for its lock
    try:
        if os.stat(config.runtime_path / f"{cenv_id}.sock").st_ino == ino:
            return pid
    except FileNotFoundError:
        pass
    return None  # its name was taken away


def _spawn(config: ServerConfig, listener: socket.socket, conn: socket.socket, msg: zygote.Spawn) -> None:
    cenv_id = msg.cenv
    if not is_id(cenv_id):
        _reply(conn, zygote.Refused("internal", "bad spawn request"))
        return
    pid = _live_worker(config, cenv_id)
    if pid is not None:
        _reply(conn, zygote.Spawned(pid, False))
        return
    run = config.prepare_runtime_path()
    path = run / f"{cenv_id}.sock"
    path.unlink(missing_ok=True)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    closing_r, closing_w = os.pipe2(os.O_CLOEXEC)
    try:
        lst.bind(str(path))
        os.chmod(path, 0o600)
        lst.listen(128)
        ino = os.stat(path).st_ino
        page, crashes = fates.new_page(), fates.take_crashes(cenv_id)
        pid = _fork()
        if pid == 0:
            code = 1
            try:
                conn.close()
                os.close(closing_r)
                _after_fork(listener, None)
                crash_marker.install(page, crashes)
                code = server.run_worker(lst.detach(), cenv_id, config, path, ino, closing_fd=closing_w)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
    except BaseException:
        os.close(closing_r)
        raise
    finally:
        lst.close()
        os.close(closing_w)
    _children.add(pid)
    fates.started(pid, cenv_id, page)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    old = _workers.pop(cenv_id, None)  # to the end: the dict is in start order
    if old is not None:
        os.close(old[2])  # its successor's name replaced its own
    _workers[cenv_id] = (pid, ino, closing_r)
    _reply(conn, zygote.Spawned(pid, True))
    _cap_workers(config.max_workers)


def _fork() -> int:
    """os.fork, with SIGCHLD held in the parent until the caller unblocks it, once it has
    registered the child (fates.started): a child that dies at once is then reaped after that."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        return os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        raise


def _fate(conn: socket.socket, msg: zygote.Fate) -> None:
    """How a worker ended, once it has: its exit signal and what its crash marker said
    (wce.worker.fates); None while it runs, or for a pid that is not one of our workers."""
    pid = msg.pid
    if fates.tracked(pid):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = 0, 0
        if done == pid:
            fates.reaped(pid, status)
            _forget(pid)
    _reply(conn, zygote.Ended(fates.fate(pid)))


def _cap_workers(limit: int) -> None:
    """The server-wide worker cap, behind each gateway's own least-recently-used eviction (each
    gateway only sees the cenvs it serves): past it, the longest-running workers are asked to close
    (SIGTERM: they answer what they have, tell every gateway, and exit)."""
    live = [pid for pid, _, _ in _workers.values() if pid not in _asked_to_close]
    for pid in live[: max(0, len(live) - limit)]:
        try:
            os.kill(pid, signal.SIGTERM)
            _asked_to_close.add(pid)
        except ProcessLookupError:
            pass


def _admit(admissions: SlidingWindow, conn: socket.socket, msg: zygote.Admit) -> None:
    """Count one cenv creation (or import) from a client address, against the server-wide limit."""
    key = f"{msg.kind}:{msg.ip}"
    retry = admissions.retry_after(key)
    if retry is not None:
        _reply(conn, zygote.Refused("rate_limited", "too many cenvs created from this address; try again later", retry))
        return
    admissions.hit(key)
    _reply(conn, zygote.Done())


def _job(config: ServerConfig, listener: socket.socket, conn: socket.socket, what: str,
         work: Callable[[], None]) -> None:
    """Run one cenv-making job (create, import) in a forked child under the memory cap; the child
    answers on the connection: Done, or Refused with the domain error, never a traceback."""
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
            _reply(conn, zygote.Done())
        except WceError as exc:
            _reply(conn, zygote.Refused(exc.code, exc.message))
    except BaseException:
        traceback.print_exc()
        code = 1
        try:
            _reply(conn, zygote.Refused("internal", f"could not {what} the cenv"))
        except OSError:
            pass
    finally:
        os._exit(code)


def _create(config: ServerConfig, listener: socket.socket, conn: socket.socket, msg: zygote.Create) -> None:
    def work() -> None:
        username = auth.check_username(msg.username)
        password = auth.check_password(msg.password)
        config.data_path.mkdir(parents=True, exist_ok=True)
        cenv.create(config.data_path, msg.cenv, username, auth.hash_password(password), ip=msg.ip)

    _job(config, listener, conn, "create", work)


def _import(config: ServerConfig, listener: socket.socket, conn: socket.socket, msg: zygote.Import,
            fds: list[int]) -> None:
    """Check the uploaded file (an open descriptor from the gateway) and install it, in a child."""
    if len(fds) != 1:
        _close(fds)
        _reply(conn, zygote.Refused("internal", "bad import request"))
        return

    def work() -> None:
        backup.import_file(config.data_path, f"/proc/self/fd/{fds[0]}", msg.cenv,
                           credentials=(msg.username, msg.password), ip=msg.ip)

    try:
        _job(config, listener, conn, "import", work)
    finally:
        os.close(fds[0])  # the parent's copy (the child exits inside _job)


def _record_ceilings(config: ServerConfig) -> None:
    """Write the server's cap ceilings where `wce caps` shows them from (it runs without our flags)."""
    path = config.ceilings_path
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(config.cenv_defaults()))
        os.replace(tmp, path)
    except OSError:
        traceback.print_exc()
        tmp.unlink(missing_ok=True)


def serve(listen_fd: int, config: ServerConfig) -> None:
    """Accept requests until SIGTERM (or the gateway's death), then stop every child."""
    global _config
    listener = socket.socket(fileno=listen_fd)
    _config = config
    _record_ceilings(config)
    sandbox.prepare(config)
    # a restart by the master (which waits with its signals blocked) must not leave them blocked here
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, _stop)
    die_with_parent(signal.SIGTERM)
    admissions = SlidingWindow(config.new_per_hour, 3600.0)
    gc.collect()
    gc.freeze()
    try:
        while True:
            conn, _ = listener.accept()
            try:
                conn.settimeout(5)
                _serve_one(config, listener, conn, admissions)
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
        for cenv_id, (_, ino, closing) in list(_workers.items()):
            _drop_name(cenv_id, ino, closing)
        _workers.clear()


def _serve_one(config: ServerConfig, listener: socket.socket, conn: socket.socket, admissions: SlidingWindow) -> None:
    """Read one request from a new connection and answer it (Refused if it is not one)."""
    payload, fds = _read_request(conn)
    try:
        msg = zygote.decode(payload)
    except ProtocolError as exc:
        _close(fds)
        _reply(conn, zygote.Refused("internal", f"bad request: {exc}"))
        return
    if isinstance(msg, zygote.Import):
        _import(config, listener, conn, msg, fds)
        return
    _close(fds)  # only an import sends one
    if isinstance(msg, zygote.Spawn):
        _spawn(config, listener, conn, msg)
    elif isinstance(msg, zygote.Admit):
        _admit(admissions, conn, msg)
    elif isinstance(msg, zygote.Create):
        _create(config, listener, conn, msg)
    elif isinstance(msg, zygote.Fate):
        _fate(conn, msg)
    else:
        _reply(conn, zygote.Refused("internal", f"{type(msg).__name__} is a reply, not a request"))


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


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
    """Entry point: `python -m wce.worker.zygote --fd N --config JSON`."""
    p = argparse.ArgumentParser()
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--config", required=True)
    args = p.parse_args(argv)
    serve(args.fd, ServerConfig.from_dict(json.loads(args.config)))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
