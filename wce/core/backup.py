"""Copies of cenv files in and out: online export, checked import, integrity checks.

One code path for the admin CLI (`wce export`, `wce import`, `wce check`), the worker's
`GET /{cenv}/api/export` and the fork server's `import` op behind `POST /import`.

- export: SQLite's online backup API from a connection of its own, in one step, i.e. inside one
  read transaction: the copy is the database as of one commit, while writers carry on in the WAL.
- import: the file is checked before anything is written under a cenv name (SQLite magic,
  integrity_check, WCE application_id, a schema version this server knows, our tables with the
  exact definitions of that version, no trigger or view touching `_wce_` tables, a signing secret
  and an enabled admin), then migrated, given a fresh signing secret with its sessions cleared
  and its resource-cap exceptions removed (whoever made the file could have written them), and
  linked into place under a new id.

Nothing half-written is ever left under a final name: every file is built under a dot-name that
no pattern for cenvs matches (`.{id}.{random}.importing`), fsynced, then linked or renamed.

    BackupError (core.errors.Invalid, "invalid")   the file is refused, with a one-line reason
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import apsw

from . import audit, auth, schema
from .errors import Conflict, Forbidden, Invalid, NotFound
from .ids import SUFFIX, is_id, path_for

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 10_000


class BackupError(Invalid):
    """A file is not an acceptable cenv (damaged, foreign, too new): 422 over HTTP."""


@dataclass(frozen=True, slots=True)
class CenvInfo:
    """What `list` shows of a cenv: from the file system only, never opening the database."""

    id: str
    size: int  # bytes of the database and its WAL
    last_used: float  # newest mtime of the file and its WAL


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on one file: `problems` is empty when it is a sound cenv."""

    id: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def fsync_path(path: Path) -> None:
    """fsync a file or directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cleanup(tmp: Path) -> None:
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
        leftover.unlink(missing_ok=True)


def temp_name(folder: Path, stem: str, kind: str) -> Path:
    """A dot-name in folder for a file being built; never matches `*.sqlite`."""
    return folder / f".{stem}.{secrets.token_hex(6)}.{kind}"


# listing

def cenv_ids(data_dir: str | os.PathLike[str]) -> list[str]:
    """Every cenv id in the data folder, sorted."""
    out = []
    for entry in os.scandir(data_dir):
        name = entry.name
        if name.endswith(SUFFIX) and is_id(name[: -len(SUFFIX)]) and entry.is_file():
            out.append(name[: -len(SUFFIX)])
    return sorted(out)


def info(data_dir: str | os.PathLike[str], cenv_id: str) -> CenvInfo:
    """Size and last use of a cenv, from its file and WAL."""
    path = path_for(data_dir, cenv_id)
    st = path.stat()
    size, last = st.st_size, st.st_mtime
    try:
        wal = Path(f"{path}-wal").stat()
        size += wal.st_size
        last = max(last, wal.st_mtime)
    except FileNotFoundError:
        pass
    return CenvInfo(cenv_id, size, last)


# export

def _open_source(path: Path) -> apsw.Connection:
    if not path.exists():
        raise NotFound("no such cenv")
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    return conn


def snapshot(src: Path, dst: Path) -> None:
    """Write a consistent copy of the database at src to the new file dst (which must not exist).

    One backup step copies every page inside one read transaction, so the copy is the database as
    of one commit; writers on other connections carry on meanwhile (WAL). The copy is fsynced.
    """
    source = _open_source(src)
    try:
        target = apsw.Connection(str(dst), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        try:
            with target.backup("main", source, "main") as b:
                while not b.done:
                    b.step(-1)
            # a single-file copy: fold its pages into the main file, no -wal beside it
            target.pragma("journal_mode", "delete")
        finally:
            target.close()
    finally:
        source.close()
    fsync_path(dst)


def export(data_dir: str | os.PathLike[str], cenv_id: str, out: str | os.PathLike[str], *,
           overwrite: bool = False) -> Path:
    """Copy a cenv to the file `out`: built under a temp name beside it, fsynced, then moved in."""
    src = path_for(data_dir, cenv_id)
    final = Path(out).resolve()
    if final.exists() and not overwrite:
        raise Conflict(f"{out} already exists")
    if not final.parent.is_dir():
        raise NotFound(f"no folder {final.parent}")
    tmp = temp_name(final.parent, cenv_id, "exporting")
    try:
        snapshot(src, tmp)
        if overwrite:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise Conflict(f"{out} already exists") from None
        fsync_path(final.parent)
    finally:
        _cleanup(tmp)
    return final


def open_snapshot(data_dir: str | os.PathLike[str], cenv_id: str,
                  scratch: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """A consistent copy as an open file descriptor (already unlinked: nothing to clean up) and its
    size; for streaming it over HTTP. The copy is made in `scratch` (default: the data folder)."""
    folder = Path(data_dir)
    tmp = temp_name(Path(scratch) if scratch is not None else folder, cenv_id, "exporting")
    try:
        snapshot(path_for(folder, cenv_id), tmp)
        fd = os.open(tmp, os.O_RDONLY)
    finally:
        _cleanup(tmp)
    return fd, os.fstat(fd).st_size


# checking

def _reference_schema(version: int) -> dict[str, tuple[str, str | None]]:
    """name -> (type, sql) of every `_wce_` object a file of this schema version must have."""
    ref = apsw.Connection(":memory:")
    try:
        with ref:
            for sql in schema.MIGRATIONS[:version]:
                ref.execute(sql)
        return {name: (kind, sql) for kind, name, sql in ref.execute(
            "SELECT type, name, sql FROM sqlite_schema WHERE name LIKE '\\_wce\\_%' ESCAPE '\\'")}
    finally:
        ref.close()


def _problems(conn: apsw.Connection) -> list[str]:
    """Why this open database is not a sound cenv (empty if it is)."""
    try:
        result = conn.execute("PRAGMA integrity_check(20)").fetchall()
    except apsw.Error:
        return ["the file is damaged or not a SQLite database"]
    if result != [("ok",)]:
        return ["the file is damaged (integrity_check failed)"]
    if int(conn.pragma("application_id")) != schema.APPLICATION_ID:
        return ["not a WCE cenv file (wrong application_id)"]
    version = schema.version(conn)
    if version > schema.SCHEMA_VERSION:
        return [f"made by a newer WCE (schema version {version}, this server knows up to {schema.SCHEMA_VERSION})"]
    if version < 1:
        return ["not a WCE cenv file (no schema version)"]
    problems = []
    have = {name: (kind, sql) for kind, name, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_schema WHERE name LIKE '\\_wce\\_%' ESCAPE '\\'")}
    for name, definition in _reference_schema(version).items():
        if name not in have:
            problems.append(f"missing table or index {name}")
        elif have[name] != definition:
            problems.append(f"{name} is not defined as WCE defines it")
    for kind, name, sql in conn.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_schema "
                                        "WHERE type IN ('trigger', 'view')"):
        if "_wce_" in sql.lower() or name.lower().startswith("_wce_"):
            problems.append(f"the {kind} {name} touches WCE's own tables")
    if problems:
        return problems
    if conn.execute("SELECT 1 FROM _wce_meta WHERE key = 'jwt_secret'").fetchone() is None:
        problems.append("no signing secret")
    if conn.execute("SELECT 1 FROM _wce_users WHERE role = 'admin' AND disabled = 0").fetchone() is None:
        problems.append("no enabled admin user")
    return problems


def _open_checked(path: Path, *, writable: bool) -> apsw.Connection:
    """Open a file that may be hostile: no trusted schema, defensive mode, nothing created."""
    with open(path, "rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            raise BackupError("not a SQLite database")
    flags = apsw.SQLITE_OPEN_READWRITE if writable else apsw.SQLITE_OPEN_READONLY
    try:
        conn = apsw.Connection(str(path), flags=flags)
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
    except apsw.Error:
        raise BackupError("the file is damaged or not a SQLite database") from None
    return conn


def check_file(path: str | os.PathLike[str], cenv_id: str = "") -> CheckResult:
    """Integrity and shape of a cenv file (only reads; safe while a worker writes it)."""
    try:
        conn = _open_checked(Path(path), writable=True)
    except BackupError as exc:
        return CheckResult(cenv_id, (exc.message,))
    except OSError:
        return CheckResult(cenv_id, ("cannot read the file",))
    try:
        return CheckResult(cenv_id, tuple(_problems(conn)))
    except apsw.Error:
        return CheckResult(cenv_id, ("the file is damaged or not a SQLite database",))
    finally:
        conn.close()


def check(data_dir: str | os.PathLike[str], cenv_id: str) -> CheckResult:
    """check_file on a cenv of the data folder."""
    return check_file(path_for(data_dir, cenv_id), cenv_id)


# import

def _verify_admin(conn: apsw.Connection, username: str, password: str) -> str:
    """The admin's stored name if the credentials match an enabled admin of the file; else Forbidden.

    An unknown user costs the same argon2 verification as a wrong password.
    """
    row = conn.execute("SELECT username, password_hash FROM _wce_users "
                       "WHERE username = ? AND role = 'admin' AND disabled = 0", (username,)).fetchone()
    if not auth.verify_password(row[1] if row else None, password):
        raise Forbidden("the credentials do not match an admin of the uploaded cenv")
    return str(row[0])


def import_file(data_dir: str | os.PathLike[str], src: str | os.PathLike[str], cenv_id: str, *,
                credentials: tuple[str, str] | None = None, actor: str = "cli", ip: str | None = None) -> Path:
    """Check the file at src and install a copy of it as cenv `cenv_id`; return its path.

    With credentials, they must be those of an enabled admin of the file (Forbidden otherwise).
    The installed copy gets a fresh signing secret and no sessions: every token issued for the
    file before is dead, at the old id and the new one. It gets no cap exceptions either: those
    are the operator's to set (`wce caps`). src itself is never modified.
    """
    folder = Path(data_dir)
    final = path_for(folder, cenv_id)
    tmp = temp_name(folder, cenv_id, "importing")
    try:
        try:
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
        except FileNotFoundError:
            raise NotFound("no such file") from None
        conn = _open_checked(tmp, writable=True)
        try:
            problems = _problems(conn)
            if problems:
                raise BackupError("refused: " + "; ".join(problems[:3]))
            if credentials is not None:
                actor = _verify_admin(conn, *credentials)
            conn.pragma("foreign_keys", True)
            schema.migrate(conn)
            now = time.time()
            with conn:
                conn.execute("UPDATE _wce_meta SET value = ? WHERE key = 'jwt_secret'", (secrets.token_hex(32),))
                conn.execute("INSERT OR REPLACE INTO _wce_meta(key, value) VALUES ('imported_at', ?)", (repr(now),))
                conn.execute("DELETE FROM _wce_sessions")
                conn.execute("DELETE FROM _wce_caps")  # the operator's exceptions are never uploaded
                audit.record(conn, "cenv.import", actor=actor, target=cenv_id, ip=ip)
            conn.pragma("journal_mode", "wal")
        except apsw.Error:
            raise BackupError("the file is damaged or not a SQLite database") from None
        finally:
            conn.close()
        fsync_path(tmp)
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise Conflict("a cenv with this id already exists") from None
        fsync_path(folder)
        return final
    finally:
        _cleanup(tmp)


def delete(data_dir: str | os.PathLike[str], cenv_id: str,
           no_worker: Callable[[], AbstractContextManager[object]] | None = None) -> None:
    """Remove a cenv. Its file is first renamed away, so no new worker can open it; then, inside
    `no_worker()` (entered once no worker of the cenv is left, and keeping it so: the CLI holds
    the cenv's lock there), the file, its WAL and shared-memory files are unlinked. No write is
    acknowledged into an unlinked file: the last worker answered everything before it exited. If
    `no_worker()` fails, the renamed file is left (under a dot-name no cenv pattern matches)."""
    folder = Path(data_dir)
    path = path_for(folder, cenv_id)
    trash = temp_name(folder, cenv_id, "deleting")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        raise NotFound("no such cenv") from None
    fsync_path(folder)
    with no_worker() if no_worker is not None else nullcontext():
        for p in (trash, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)
        fsync_path(folder)
