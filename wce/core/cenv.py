"""How a new cenv file is made, and what every open needs from it.

Creation is atomic: the file is built complete under a temporary name and
hard-linked into place, which fails if the name exists, so there is never a half-made cenv and
never two creators of one id.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import apsw

from . import audit, schema
from .errors import Conflict
from .ids import path_for



def create(data_dir: str | os.PathLike[str], cenv_id: str, username: str, password_hash: str,
           *, ip: str | None = None) -> Path:
    """Write a new cenv file with its schema, secret and first (admin) user; return its path."""
    final = path_for(data_dir, cenv_id)
    tmp = final.with_name(f".{cenv_id}.{secrets.token_hex(4)}.creating")
    try:
        conn = apsw.Connection(str(tmp))
        try:
            conn.pragma("foreign_keys", True)
            schema.migrate(conn)
            now = time.time()
            with conn:
                conn.executemany(
                    "INSERT INTO _wce_meta(key, value) VALUES (?, ?)",
                    [("jwt_secret", secrets.token_hex(32)), ("created_at", repr(now)), ("created_as", cenv_id)],
                )
                conn.execute(
                    "INSERT INTO _wce_users(username, password_hash, role, created_at, updated_at)"
                    " VALUES (?, ?, 'admin', ?, ?)",
                    (username, password_hash, now, now),
                )
                audit.record(conn, "cenv.create", actor=username, target=cenv_id, ip=ip)
            conn.pragma("journal_mode", "wal")
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise Conflict("a cenv with this id already exists") from None
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return final
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)


def secret(conn: apsw.Connection) -> bytes:
    """The cenv's token signing secret."""
    row = conn.execute("SELECT value FROM _wce_meta WHERE key = 'jwt_secret'").fetchone()
    if row is None:
        raise RuntimeError("cenv file has no signing secret")
    return bytes.fromhex(row[0])
