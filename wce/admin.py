"""The operator's commands on a data folder: list, users, export, import, check, delete, caps.

Each works straight on the cenv files with wce.core and is safe while the server runs: writes go
through SQLite transactions with a busy timeout (the worker's connection sees them at once),
copies are online backups, and `delete` renames the file away before it asks a live worker to
stop; `caps` asks a live worker to stop too, since only a new one can run under raised caps. Errors are one line on stderr and exit status 1; `check` exits 1 when a cenv is unsound.
Passwords come from the prompt or the first line of stdin, never from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .config import ServerConfig

T = TypeVar("T")
COMMANDS = ("list", "users", "export", "import", "check", "delete", "caps")
STOP_TIMEOUT = 30.0


class CommandError(Exception):
    """A command failed: its message is the one line the operator sees."""


def add_parsers(sub: Any) -> None:
    """Add the admin subcommands to `wce`'s subparsers."""
    p = sub.add_parser("list", help="list cenvs with size and last use")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    users = sub.add_parser("users", help="manage the users of a cenv")
    us = users.add_subparsers(dest="users_command", required=True)
    ua = us.add_parser("add", help="add a user; the password is read from a prompt or stdin")
    ua.add_argument("cenv")
    ua.add_argument("username")
    ua.add_argument("--role", default="user")
    up = us.add_parser("passwd", help="set a user's password (their sessions end)")
    up.add_argument("cenv")
    up.add_argument("username")
    ul = us.add_parser("list", help="list a cenv's users")
    ul.add_argument("cenv")
    ex = sub.add_parser("export", help="write a consistent copy of a cenv to FILE (online backup)")
    ex.add_argument("cenv")
    ex.add_argument("file")
    ex.add_argument("--force", action="store_true", help="replace FILE if it exists")
    im = sub.add_parser("import", help="check a cenv file and install a copy under a new id (printed)")
    im.add_argument("file")
    sub.add_parser("check", help="check the integrity of every cenv; exit 1 on a problem")
    de = sub.add_parser("delete", help="delete a cenv (asks first)")
    de.add_argument("cenv")
    de.add_argument("--yes", action="store_true", help="do not ask")
    de.add_argument("--wait", type=float, default=STOP_TIMEOUT, metavar="SECONDS",
                    help=f"how long a live worker may take to finish what it is doing before it is killed"
                         f" (default {STOP_TIMEOUT:g})")
    ca = sub.add_parser("caps", help="show a cenv's resource caps, or set exceptions to the server's ceilings")
    ca.add_argument("cenv")
    ca.add_argument("--memory-mb", type=int, help="address space of the cenv's worker, raised or lowered")
    ca.add_argument("--cpu-ms-per-request", type=int, help="CPU budget of one request")
    ca.add_argument("--max-db-mb", type=int, help="database size cap")
    ca.add_argument("--reset", action="store_true", help="remove the exceptions: the server's ceilings apply")


def run(args: argparse.Namespace) -> int:
    """Run one admin command; the exit status."""
    from .core.errors import WceError

    data = ServerConfig(data=args.data).data_path
    try:
        if not data.is_dir():
            raise CommandError(f"no data folder {data}")
        handler: Callable[[Path, argparse.Namespace], int] = HANDLERS[args.command]
        return handler(data, args)
    except CommandError as exc:
        print(f"wce: {exc}", file=sys.stderr)
    except WceError as exc:
        print(f"wce: {exc.message}", file=sys.stderr)
    except ValueError as exc:  # path_for: not a cenv id
        print(f"wce: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"wce: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
    except KeyboardInterrupt:
        print("wce: interrupted", file=sys.stderr)
    return 1


def progress(items: list[T], label: str) -> Iterator[T]:
    """Yield items; draw a bar on stderr while doing so, only when stderr is a terminal."""
    tty = sys.stderr.isatty() and len(items) > 1
    total = len(items)
    for i, item in enumerate(items):
        if tty:
            done = int(30 * i / total)
            sys.stderr.write(f"\r{label} [{'#' * done}{'.' * (30 - done)}] {i}/{total}")
            sys.stderr.flush()
        yield item
    if tty:
        sys.stderr.write(f"\r{label} [{'#' * 30}] {total}/{total}\n")
        sys.stderr.flush()


def read_password(confirm: bool = True) -> str:
    """From the prompt (twice), or the first line of stdin when it is not a terminal."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    pw = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != pw:
        raise CommandError("passwords differ")
    return pw


def _cenv_path(data: Path, cenv: str) -> Path:
    from .core.ids import path_for

    path = path_for(data, cenv)
    if not path.exists():
        raise CommandError(f"no cenv {cenv}")
    return path


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# commands

def cmd_list(data: Path, args: argparse.Namespace) -> int:
    from .core import backup

    rows = [backup.info(data, c) for c in backup.cenv_ids(data)]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.last_used))
        exc = _exceptions(data, r.id)
        if args.json:
            print(json.dumps({"cenv": r.id, "size": r.size, "last_used": r.last_used, "caps": exc}))
        else:
            extra = "  caps: " + " ".join(f"{k}={v}" for k, v in exc.items()) if exc else ""
            print(f"{r.id}  {_human(r.size):>10}  {when}{extra}")
    return 0


def _exceptions(data: Path, cenv: str) -> dict[str, int]:
    """A cenv's cap exceptions, read without changing its file (none if it cannot be read)."""
    import apsw

    from .core import caps
    from .core.ids import path_for

    try:
        conn = apsw.Connection(str(path_for(data, cenv)), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.set_busy_timeout(5000)
            return caps.exceptions(conn)
        finally:
            conn.close()
    except apsw.Error:
        return {}


def _connect(path: Path) -> Any:
    from .core import db

    return db.connect(str(path))


def cmd_users(data: Path, args: argparse.Namespace) -> int:
    from .core import accounts, auth, permissions
    from .core.errors import NotFound

    conn = _connect(_cenv_path(data, args.cenv))
    try:
        if args.users_command == "list":
            for u in accounts.list_users(conn):
                print(f"{u['id']:>5}  {u['username']:<24} {u['role']:<12}{'  disabled' if u['disabled'] else ''}")
            return 0
        username = auth.check_username(args.username)
        if args.users_command == "add":
            role = permissions.check_role(args.role, allow_anon=False)
            pw_hash = auth.hash_password(auth.check_password(read_password()))
            user = accounts.create_user(conn, username, pw_hash, role, actor="cli", ip="cli")
            print(user.id)
            return 0
        cand = conn.execute("SELECT id FROM _wce_users WHERE username = ?", (username,)).fetchone()
        if cand is None:
            raise NotFound(f"no user {username} in this cenv")
        pw_hash = auth.hash_password(auth.check_password(read_password()))
        accounts.update_user(conn, int(cand[0]), role=None, disabled=None, password_hash=pw_hash, actor="cli", ip="cli")
        print(f"password of {username} changed; their sessions are revoked", file=sys.stderr)
        return 0
    finally:
        conn.close()


def cmd_export(data: Path, args: argparse.Namespace) -> int:
    from .core import backup

    _cenv_path(data, args.cenv)
    out = backup.export(data, args.cenv, args.file, overwrite=args.force)
    print(f"exported {args.cenv} to {out}", file=sys.stderr)
    return 0


def cmd_import(data: Path, args: argparse.Namespace) -> int:
    from .core import backup
    from .core.ids import new_id

    if not Path(args.file).is_file():
        raise CommandError(f"no file {args.file}")
    cenv = new_id()
    backup.import_file(data, args.file, cenv, actor="cli", ip="cli")
    print(cenv)
    return 0


def cmd_check(data: Path, args: argparse.Namespace) -> int:
    from .core import backup

    bad = 0
    ids = backup.cenv_ids(data)
    for cenv in progress(ids, "checking"):
        result = backup.check(data, cenv)
        if not result.ok:
            bad += 1
            print(f"{cenv}: {'; '.join(result.problems)}")
    print(f"{len(ids)} cenvs checked, {bad} with problems", file=sys.stderr)
    return 1 if bad else 0


def cmd_delete(data: Path, args: argparse.Namespace) -> int:
    from .core import backup

    _cenv_path(data, args.cenv)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("refusing to delete without a terminal to ask on; add --yes")
        answer = input(f"Delete cenv {args.cenv} and all its data? Type its id to confirm: ")
        if answer.strip() != args.cenv:
            raise CommandError("not confirmed; nothing deleted")
    run_dir = ServerConfig(data=str(data)).runtime_path
    backup.delete(data, args.cenv, lambda: no_worker(run_dir, args.cenv, args.wait))
    print(f"deleted {args.cenv}", file=sys.stderr)
    return 0


def cmd_caps(data: Path, args: argparse.Namespace) -> int:
    from .core import caps, schema
    from .core.settings import CAPS

    path = _cenv_path(data, args.cenv)
    values = {k: v for k in CAPS if (v := getattr(args, k)) is not None}
    if args.reset and values:
        raise CommandError("give either --reset or new caps, not both")
    for key, value in values.items():
        caps.check(key, value)
    changed = args.reset or bool(values)
    if changed:
        conn = _connect(path)
        try:
            schema.migrate(conn)
            if args.reset:
                caps.clear_exceptions(conn, actor="cli", ip="cli")
            else:
                caps.set_exceptions(conn, values, actor="cli", ip="cli")
        finally:
            conn.close()
    exc = _exceptions(data, args.cenv)
    server, source = _server_ceilings(data)
    for key in CAPS:
        if key in exc:
            print(f"{key:<20}{exc[key]:>8}  exception (server ceiling {server[key]})")
        else:
            print(f"{key:<20}{server[key]:>8}  server ceiling")
    if source:
        print(f"(server ceilings: {source})", file=sys.stderr)
    if changed:
        # RLIMIT_AS cannot be raised by the process it limits: the new caps need a new worker
        if stop_worker(ServerConfig(data=str(data)).runtime_path, args.cenv):
            print(f"caps of {args.cenv} changed; its worker was stopped: the next request starts one under them",
                  file=sys.stderr)
        else:
            print(f"caps of {args.cenv} changed; no live worker answered: the next one starts under them",
                  file=sys.stderr)
    return 0


def _server_ceilings(data: Path) -> tuple[dict[str, int], str]:
    """The ceilings of the server running on this folder (as it recorded them), else those `wce
    serve` would take from WCE_* variables and the defaults; and a note when it is the latter."""
    from .config import env_default

    config = ServerConfig(data=str(data))
    try:
        recorded = json.loads(config.ceilings_path.read_text())
        return {k: int(recorded[k]) for k in config.cenv_defaults()}, ""
    except (OSError, ValueError, KeyError, TypeError):
        defaults = config.cenv_defaults()
        return ({k: int(env_default(k, v)) for k, v in defaults.items()},
                "no server has run on this folder; from WCE_MEMORY_MB, WCE_CPU_MS_PER_REQUEST, WCE_MAX_DB_MB or the defaults")


def stop_worker(run_dir: Path, cenv: str, timeout: float = STOP_TIMEOUT) -> bool:
    """Ask the cenv's live worker, if any, to finish what is in flight and exit; wait for it.
    True if one was stopped (see _ask_to_stop). A successor may start at once: for `wce caps`,
    whose new caps only a new worker runs under; `delete` uses no_worker."""
    pid = _ask_to_stop(run_dir / f"{cenv}.sock", 5.0)
    if pid is None:
        return False
    deadline = time.monotonic() + timeout
    while pid and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _ask_to_stop(path: Path, timeout: float) -> int | None:
    """Ask the worker listening at path to stop: its pid (0 if it did not say), or None if none
    answered within `timeout` seconds at each step.

    Speaks the worker's own protocol on its socket, as a gateway would: Hello, then Shutdown, then
    reads until the worker answers Closing. Hanging up sooner can lose the Shutdown: the worker's
    first write to us (the pages it pushes to every new connection) then fails, and it drops the
    connection unread. The worker tells every gateway it is closing, so they send it nothing new,
    and exits once each of them has hung up.
    """
    from . import proto

    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(max(timeout, 0.1))
    try:
        sock.connect(str(path))
        sock.sendall(proto.frame(proto.encode(proto.Hello(proto.PROTOCOL_VERSION, "gateway", {"client": "wce-admin"}))))
        frames = proto.FrameReader()

        def receive() -> proto.Message:
            return proto.decode(frames.read(lambda: sock.recv(65536)))

        hello = receive()
        if not isinstance(hello, proto.Hello):
            return None
        pid = int(hello.info.get("pid", 0))
        sock.sendall(proto.frame(proto.encode(proto.Shutdown())))
        while not isinstance(receive(), proto.Closing):
            pass
    except (OSError, EOFError, proto.ProtocolError):
        return None
    finally:
        sock.close()
    return pid


KILL_TIMEOUT = 10.0


@contextlib.contextmanager
def no_worker(run_dir: Path, cenv: str, wait: float = STOP_TIMEOUT) -> Iterator[None]:
    """Inside: no worker of the cenv is running, and none can begin (for `delete`, once the file
    is renamed away, so that any worker started later finds nothing to open).

    Each worker holds the cenv's lock (`{run}/{ID}.lock`, wce.worker.server.lock_cenv) for its
    whole life, the kernel drops it when it exits, and a successor takes it before it opens the
    file: so we hold it, here. While it is taken, every live worker found under the cenv's socket
    name is asked to stop (it finishes what is in flight, tells every gateway, and exits once each
    has hung up: no gateway answers for the cenv after that). One still running after `wait`
    seconds is killed. CommandError if the lock stays taken even so.
    """
    if not run_dir.is_dir():  # no server has run on this folder: no worker either
        yield
        return
    lock = run_dir / f"{cenv}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if not _try_lock(fd):
            print(f"waiting for the live worker of {cenv} to stop (killed after {wait:g} s)", file=sys.stderr,
                  flush=True)
            _wait_for_lock(fd, lock, run_dir / f"{cenv}.sock", wait)
        yield
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_for_lock(fd: int, lock: Path, sock: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    asked: set[int] = set()  # inodes of the socket names whose worker was asked already
    while not _try_lock(fd):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            ino = os.stat(sock).st_ino
        except OSError:
            ino = None
        if ino is not None and ino not in asked:  # a worker (or a successor waiting for the lock)
            asked.add(ino)
            _ask_to_stop(sock, left)
        else:
            time.sleep(0.02)
    else:
        return
    deadline = time.monotonic() + KILL_TIMEOUT
    while not _try_lock(fd):
        if time.monotonic() > deadline:
            raise CommandError(f"a worker still holds {lock} after it was killed")
        _kill_holders(lock)
        time.sleep(0.05)
    print(f"the worker of {lock.stem} did not stop in time; it was killed", file=sys.stderr)


def _kill_holders(lock: Path) -> None:
    """SIGKILL every other process that has the lock file open (the worker, and any child it
    forked, which shares its lock): found through /proc, signalled through a pidfd, so that a pid
    reused in between is never hit."""
    try:
        target = os.stat(lock)
    except OSError:
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            pidfd = os.pidfd_open(int(entry))
        except OSError:
            continue
        try:
            if _has_open(int(entry), target):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)


def _has_open(pid: int, target: os.stat_result) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


HANDLERS: dict[str, Callable[[Path, argparse.Namespace], int]] = {
    "list": cmd_list, "users": cmd_users, "export": cmd_export, "import": cmd_import,
    "check": cmd_check, "delete": cmd_delete, "caps": cmd_caps,
}
