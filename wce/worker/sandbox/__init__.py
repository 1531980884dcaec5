"""The kernel sandbox a worker enters after fork, before it opens its cenv: Landlock and seccomp.

A bug in SQLite, the Starlark interpreter or a C extension, reached from a tenant's code, must not
let that tenant read another cenv's file, reach the network or act on other processes. So each
worker gives up, for good, what tenant work never needs (`enter`):

Landlock (landlock.py; files, TCP, signals; Linux >= 5.13, each right as far as the ABI knows it):
    read, write    its cenv file, `-wal` and `-shm` (made empty beforehand if missing: a rule holds
                   an inode); nothing else of the data folder: no other cenv, no listing, creating,
                   renaming or removing there, nor in the run folder
    all it needs   its scratch folder `{data}/.scratch/{cenv}/`, for the copy `GET export` streams
    read only      the code it may import late (stdlib, site-packages, the wce package), /usr,
                   /dev/urandom (SQLite reseeds after fork), /dev/null, its own /proc/PID
    nothing        exec of any file; TCP bind and connect (ABI 4); signals to, and abstract Unix
                   sockets of, processes outside its own sandbox (ABI 6)
seccomp (seccomp.py; EPERM): exec, ptrace and the like, connect, sockets other than AF_UNIX
    streams, mount, namespaces, bpf, perf_event_open, keyrings, io_uring, chmod/chown by path...

What a worker then does differently: SQLite keeps its temporary storage (sorts, temp tables,
CREATE INDEX) in memory, under the worker's memory cap, since a temp folder shared by workers
would show one tenant's spilled rows to another; a worker does not remove its socket name: it
tells the fork server it is closing, on a pipe, and the fork server removes it.

Where the kernel lacks a part, the server runs without it: the fork server probes once at start
(`prepare`, in a throwaway child, so a service manager's own filter counts), logs one line and
records what is active in the run folder, where /healthz reads it. The operator may turn the
sandbox off (`--no-worker-sandbox`), e.g. to attach a debugger to a worker. A worker that cannot
enter a sandbox the probe found refuses to serve (SandboxError) rather than serve without it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import apsw

from wce.config import ServerConfig
from wce.core.ids import path_for

from . import landlock, seccomp
from .landlock import FS_READ_FILE, READ, READ_WRITE_FILE, SCRATCH
from .libc import no_new_privs
from .selftest import Selftest


class SandboxError(Exception):
    """A worker could not enter a sandbox the kernel supports (a bug, or a host changed under us)."""


@dataclass(frozen=True, slots=True)
class Status:
    """Which protections workers get on this host: `landlock_abi` 0 and `seccomp` False when
    missing, with the reason in `landlock_off` and `seccomp_off`."""

    enabled: bool
    landlock_abi: int = 0
    seccomp: bool = False
    landlock_off: str = ""
    seccomp_off: str = ""

    def to_dict(self) -> dict[str, str]:
        """What /healthz shows."""
        if not self.enabled:
            return {"landlock": "off (--no-worker-sandbox)", "seccomp": "off (--no-worker-sandbox)"}
        return {"landlock": f"on (ABI {self.landlock_abi})" if self.landlock_abi else f"off ({self.landlock_off})",
                "seccomp": "on" if self.seccomp else f"off ({self.seccomp_off})"}

    def line(self) -> str:
        """The one line logged at start."""
        d = self.to_dict()
        return f"wce: worker sandbox: Landlock {d['landlock']}, seccomp {d['seccomp']}"


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the fork server works out once, for every worker it forks."""

    status: Status
    program: bytes | None  # the seccomp filter
    read_roots: tuple[str, ...]  # code and system files every worker may read


_plan: _Plan | None = None


def probe(config: ServerConfig) -> Status:
    """What workers will get here, tried for real in a throwaway child: the kernel may have a
    feature that a filter of the service manager refuses."""
    if not config.worker_sandbox:
        return Status(False)
    abi, landlock_off = landlock.abi()
    prog = seccomp.program()
    seccomp_off = "" if prog else "no system call table for this architecture"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        failed = {}
        try:
            os.close(r)
            no_new_privs()
            for name, apply in (("landlock", lambda: abi and landlock.restrict(abi, [])),
                                ("seccomp", lambda: prog and seccomp.install(prog))):
                try:
                    apply()
                except OSError as exc:
                    failed[name] = exc.strerror or str(exc)
        except BaseException as exc:
            failed = {"landlock": repr(exc), "seccomp": repr(exc)}
        finally:
            os.write(w, json.dumps(failed).encode())
            os._exit(0)
    os.close(w)
    try:
        raw = b""
        while chunk := os.read(r, 4096):
            raw += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    failed = json.loads(raw or b'{"landlock": "the probe died", "seccomp": "the probe died"}')
    if abi and "landlock" in failed:
        abi, landlock_off = 0, failed["landlock"]
    if prog and "seccomp" in failed:
        prog, seccomp_off = None, failed["seccomp"]
    return Status(True, abi, prog is not None, landlock_off, seccomp_off)


def _read_roots(config: ServerConfig) -> tuple[str, ...]:
    """Folders (and single-file modules) a worker may read: where Python imports from, the loaded
    top-level packages, /usr; never one that holds the data or run folder."""
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add("/usr")
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if "." in name or name == "__main__" or not isinstance(file, str):
            continue
        roots.add(os.path.dirname(file) if os.path.basename(file).startswith("__init__.") else file)
    private = [config.data_path, config.runtime_path.resolve()]
    out: list[Path] = []
    for real in sorted({Path(os.path.realpath(root)) for root in roots}, key=lambda p: len(p.parts)):
        if not any(p.is_relative_to(real) for p in private) and not any(real.is_relative_to(o) for o in out):
            out.append(real)
    return tuple(str(p) for p in out)


def _make_plan(config: ServerConfig) -> _Plan:
    status = probe(config)
    return _Plan(status, seccomp.program() if status.seccomp else None, _read_roots(config))


def prepare(config: ServerConfig) -> Status:
    """In the fork server at start: probe, log one line, record the status for /healthz, and keep
    what every worker will need (forked workers inherit it)."""
    global _plan
    _plan = _make_plan(config)
    print(_plan.status.line(), file=sys.stderr, flush=True)
    path = config.sandbox_status_path
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(_plan.status.to_dict()))
        os.replace(tmp, path)
    except OSError as exc:
        print(f"wce: cannot record the sandbox status: {exc}", file=sys.stderr)
        tmp.unlink(missing_ok=True)
    return _plan.status


def scratch_path(config: ServerConfig, cenv_id: str) -> Path:
    """The one folder a worker may create files in: for the copy `GET export` streams."""
    return config.data_path / ".scratch" / path_for(config.data_path, cenv_id).stem


def enter(config: ServerConfig, cenv_id: str) -> Status:
    """In a new worker, holding its cenv's lock, before it opens the cenv: make what it will need,
    then restrict it for good. SandboxError if a protection the probe found cannot be applied."""
    global _plan
    if _plan is None:  # not forked by a prepared fork server (a test in process)
        _plan = _make_plan(config)
    status = _plan.status
    selftest = Selftest.begin(config, cenv_id)
    if status.enabled:
        try:
            scratch = scratch_path(config, cenv_id)
            _prepare_scratch(scratch)
            rules = [(p, READ_WRITE_FILE) for p in _companions(path_for(config.data_path, cenv_id))]
            rules += [(str(scratch), SCRATCH), ("/dev/urandom", FS_READ_FILE), ("/dev/null", READ_WRITE_FILE),
                      (f"/proc/{os.getpid()}", READ)]
            rules += [(root, READ) for root in _plan.read_roots]
            if _temp_in_memory not in apsw.connection_hooks:
                apsw.connection_hooks.append(_temp_in_memory)
            no_new_privs()
            if status.landlock_abi:
                landlock.restrict(status.landlock_abi, rules)
            if _plan.program is not None:
                seccomp.install(_plan.program)
        except (OSError, apsw.Error) as exc:
            raise SandboxError(f"cannot enter the worker sandbox: {exc}") from exc
    if selftest is not None:
        selftest.run(status.to_dict())
    return status


def _temp_in_memory(conn: apsw.Connection) -> None:
    """SQLite's temporary storage in memory: a worker has no temp folder of its own."""
    conn.pragma("temp_store", "memory")


def _companions(main: Path) -> list[str]:
    """The cenv file and its -wal and -shm, the latter made (empty) if missing, with the file's
    mode and owner as SQLite would; none if the cenv file is not there (opening it will fail)."""
    try:
        st = os.stat(main, follow_symlinks=False)
    except FileNotFoundError:
        return []
    with open(main, "rb") as f:
        header = f.read(20)
    if len(header) == 20 and header[18:20] != b"\x02\x02":
        # not in WAL mode (copied in by hand): SQLite would need a -journal beside it, which the
        # sandbox lets it neither create nor remove; WCE's files are WAL, so make this one WAL now
        conn = apsw.Connection(str(main), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.pragma("journal_mode", "wal")
        finally:
            conn.close()
    for suffix in ("-wal", "-shm"):
        fd = os.open(f"{main}{suffix}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, stat.S_IMODE(st.st_mode))
        try:
            if os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
        finally:
            os.close(fd)
    return [str(main), f"{main}-wal", f"{main}-shm"]


def _prepare_scratch(path: Path) -> None:
    """Make the scratch folder, or empty it of what a worker killed mid-export left."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileNotFoundError:
        os.makedirs(path.parent, 0o700, exist_ok=True)
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
