"""Users and sessions of one cenv, over its connection.

Hashing is not done here (it is slow and the caller runs it off the event loop); these functions
take and store finished hashes. Every change writes its audit row in the same transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import apsw

from . import audit, auth
from .db import transaction
from .errors import Conflict, NotFound


@dataclass(frozen=True, slots=True)
class User:
    """A user as the rest of the code sees it: never with the hash."""

    id: int
    username: str
    role: str

    def public(self) -> dict[str, object]:
        """The JSON shape of the contract."""
        return {"id": self.id, "username": self.username, "role": self.role}


@dataclass(frozen=True, slots=True)
class LoginCandidate:
    """A user found for a login attempt, with the hash to check."""

    user: User
    password_hash: str


def find_for_login(conn: apsw.Connection, username: str) -> LoginCandidate | None:
    """The enabled user with this name (case-insensitive), or None."""
    row = conn.execute(
        "SELECT id, username, role, password_hash FROM _wce_users WHERE username = ? AND disabled = 0",
        (username,),
    ).fetchone()
    if row is None:
        return None
    return LoginCandidate(User(row[0], row[1], row[2]), row[3])


def get_password_hash(conn: apsw.Connection, user_id: int) -> str | None:
    """The current hash of a user (for a password change)."""
    row = conn.execute("SELECT password_hash FROM _wce_users WHERE id = ?", (user_id,)).fetchone()
    return row[0] if row else None


def open_session(conn: apsw.Connection, user: User, ttl: int, *, ip: str | None, user_agent: str | None,
                 new_hash: str | None = None) -> tuple[str, float]:
    """Record a successful login: a session row, the audit row, and an upgraded hash if given."""
    sid = auth.new_session_id()
    now = time.time()
    expires = now + ttl
    with transaction(conn):
        conn.execute(
            "INSERT INTO _wce_sessions(id, user_id, created_at, expires_at, ip, user_agent) VALUES (?, ?, ?, ?, ?, ?)",
            (sid, user.id, now, expires, ip, (user_agent or "")[:256]),
        )
        if new_hash:
            conn.execute("UPDATE _wce_users SET password_hash = ?, updated_at = ? WHERE id = ?", (new_hash, now, user.id))
        audit.record(conn, "auth.login", actor=user.username, target=f"user:{user.id}", ip=ip)
    return sid, expires


def record_login_failure(conn: apsw.Connection, username: str, *, ip: str | None, reason: str) -> None:
    """Audit a failed login (the attempted name, never the password)."""
    with transaction(conn):
        audit.record(conn, "auth.login_failed", actor=username[:64], detail={"reason": reason}, ip=ip)


def resolve_session(conn: apsw.Connection, user_id: int, session_id: str) -> User | None:
    """The user behind a live session, or None if it is revoked, expired, or the user is gone or disabled."""
    found = live_session(conn, user_id, session_id)
    return found[0] if found else None


def live_session(conn: apsw.Connection, user_id: int, session_id: str) -> tuple[User, float] | None:
    """`resolve_session` with the session's expiry time (for a cache to honour)."""
    row = conn.execute(
        "SELECT u.id, u.username, u.role, s.expires_at FROM _wce_sessions s JOIN _wce_users u ON u.id = s.user_id"
        " WHERE s.id = ? AND s.user_id = ? AND s.revoked_at IS NULL AND s.expires_at > ? AND u.disabled = 0",
        (session_id, user_id, time.time()),
    ).fetchone()
    return (User(row[0], row[1], row[2]), float(row[3])) if row else None


def revoke_session(conn: apsw.Connection, user: User, session_id: str, *, ip: str | None) -> None:
    """Logout: the session stops working at once."""
    with transaction(conn):
        conn.execute("UPDATE _wce_sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), session_id))
        audit.record(conn, "auth.logout", actor=user.username, target=f"user:{user.id}", ip=ip)


def change_password(conn: apsw.Connection, user: User, new_hash: str, keep_session: str | None, *,
                    ip: str | None) -> None:
    """Store a new hash and revoke every other session of the user."""
    now = time.time()
    with transaction(conn):
        conn.execute("UPDATE _wce_users SET password_hash = ?, updated_at = ? WHERE id = ?", (new_hash, now, user.id))
        conn.execute(
            "UPDATE _wce_sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL AND id IS NOT ?",
            (now, user.id, keep_session),
        )
        audit.record(conn, "auth.password_change", actor=user.username, target=f"user:{user.id}", ip=ip)


def create_user(conn: apsw.Connection, username: str, password_hash: str, role: str, *,
                actor: str | None, ip: str | None, action: str = "user.create") -> User:
    """Add a user; Conflict if the name is taken (case-insensitively)."""
    now = time.time()
    try:
        with transaction(conn):
            conn.execute(
                "INSERT INTO _wce_users(username, password_hash, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (username, password_hash, role, now, now),
            )
            uid = conn.last_insert_rowid()
            audit.record(conn, action, actor=actor or username, target=f"user:{uid}", detail={"role": role}, ip=ip)
    except apsw.ConstraintError:
        raise Conflict("username is taken") from None
    return User(uid, username, role)


def purge_expired_sessions(conn: apsw.Connection, older_than: float = 86400) -> int:
    """Delete sessions that expired or were revoked more than `older_than` seconds ago."""
    cutoff = time.time() - older_than
    with transaction(conn):
        conn.execute(
            "DELETE FROM _wce_sessions WHERE expires_at < ? OR (revoked_at IS NOT NULL AND revoked_at < ?)",
            (cutoff, cutoff),
        )
        return conn.changes()


USER_FIELDS = "id, username, role, disabled, created_at, updated_at"


def _user_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {"id": r[0], "username": r[1], "role": r[2], "disabled": bool(r[3]), "created_at": r[4], "updated_at": r[5]}


def list_users(conn: apsw.Connection) -> list[dict[str, Any]]:
    """Every user, without hashes."""
    return [_user_row(r) for r in conn.execute(f"SELECT {USER_FIELDS} FROM _wce_users ORDER BY id")]


def get_user(conn: apsw.Connection, user_id: int) -> dict[str, Any]:
    """One user, without the hash; NotFound if absent."""
    r = conn.execute(f"SELECT {USER_FIELDS} FROM _wce_users WHERE id = ?", (user_id,)).fetchone()
    if r is None:
        raise NotFound("no such user")
    return _user_row(r)


def _other_active_admins(conn: apsw.Connection, user_id: int) -> int:
    return int(conn.execute(
        "SELECT count(*) FROM _wce_users WHERE role = 'admin' AND disabled = 0 AND id != ?", (user_id,)).fetchone()[0])


def update_user(conn: apsw.Connection, user_id: int, *, role: str | None, disabled: bool | None,
                password_hash: str | None, actor: str, ip: str | None) -> dict[str, Any]:
    """Admin change of role, disabled flag or password; the last admin stays an enabled admin.

    Disabling a user or resetting their password revokes their sessions.
    """
    now = time.time()
    with transaction(conn):
        before = get_user(conn, user_id)
        if before["role"] == "admin" and not before["disabled"] and (
            (role is not None and role != "admin") or disabled
        ) and _other_active_admins(conn, user_id) == 0:
            raise Conflict("the last admin cannot be demoted or disabled")
        changed = []
        if role is not None and role != before["role"]:
            conn.execute("UPDATE _wce_users SET role = ?, updated_at = ? WHERE id = ?", (role, now, user_id))
            changed.append("role")
        if disabled is not None and disabled != before["disabled"]:
            conn.execute("UPDATE _wce_users SET disabled = ?, updated_at = ? WHERE id = ?", (int(disabled), now, user_id))
            changed.append("disabled")
        if password_hash is not None:
            conn.execute("UPDATE _wce_users SET password_hash = ?, updated_at = ? WHERE id = ?", (password_hash, now, user_id))
            changed.append("password")
        if disabled or password_hash is not None or "role" in changed:
            conn.execute("UPDATE _wce_sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (now, user_id))
        audit.record(conn, "user.update", actor=actor, target=f"user:{user_id}",
                     detail={"changed": changed, **({"role": role} if "role" in changed else {})}, ip=ip)
        return get_user(conn, user_id)


def delete_user(conn: apsw.Connection, user_id: int, *, actor: str, ip: str | None) -> None:
    """Remove a user and (by cascade) their sessions; never the last admin."""
    with transaction(conn):
        before = get_user(conn, user_id)
        if before["role"] == "admin" and not before["disabled"] and _other_active_admins(conn, user_id) == 0:
            raise Conflict("the last admin cannot be removed")
        conn.execute("DELETE FROM _wce_users WHERE id = ?", (user_id,))
        audit.record(conn, "user.delete", actor=actor, target=f"user:{user_id}",
                     detail={"username": before["username"]}, ip=ip)
