"""The worker's session cache answers as the session query would, at once after any change."""

from __future__ import annotations

import time
from pathlib import Path

import apsw
import pytest

from wce.core import accounts, cenv, db, ids
from wce.core.events import EventBus
from wce.core.session_cache import SessionCache

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$xJcWa1n1bgcIb2bUf/GszFrXu8UKfV6B8wgAQeJMDmE"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[apsw.Connection, SessionCache, accounts.User, str, Path]:
    path = cenv.create(tmp_path, ids.new_id(), "admin", HASH)
    conn = db.connect(str(path))
    cache = SessionCache(conn, EventBus(conn))
    user = accounts.create_user(conn, "alice", HASH, "user", actor=None, ip=None)
    sid, _ = accounts.open_session(conn, user, 3600, ip=None, user_agent=None)
    return conn, cache, user, sid, path


def test_hit_then_logout_is_seen_before_any_flush(setup: tuple[apsw.Connection, SessionCache, accounts.User, str, Path]) -> None:
    conn, cache, user, sid, _ = setup
    assert cache.resolve(user.id, sid) == user
    assert cache.resolve(user.id, sid) == user and len(cache) == 1
    accounts.revoke_session(conn, user, sid, ip=None)  # the bus is never flushed here
    assert cache.resolve(user.id, sid) is None


def test_a_disabled_user_is_refused_at_once(setup: tuple[apsw.Connection, SessionCache, accounts.User, str, Path]) -> None:
    conn, cache, user, sid, _ = setup
    assert cache.resolve(user.id, sid) == user
    conn.execute("UPDATE _wce_users SET disabled = 1 WHERE id = ?", (user.id,))
    assert cache.resolve(user.id, sid) is None


def test_another_connection_revoking_is_seen(setup: tuple[apsw.Connection, SessionCache, accounts.User, str, Path]) -> None:
    conn, cache, user, sid, path = setup
    assert cache.resolve(user.id, sid) == user
    other = db.connect(str(path))  # as `wce users passwd` does, on the file
    other.execute("UPDATE _wce_sessions SET revoked_at = ? WHERE id = ?", (time.time(), sid))
    cache.bus.flush()  # the end of a request: another connection's commits are looked for once per request
    assert cache.resolve(user.id, sid) is None


def test_expiry_is_checked_on_every_hit(setup: tuple[apsw.Connection, SessionCache, accounts.User, str, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    conn, cache, user, sid, _ = setup
    assert cache.resolve(user.id, sid) == user
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)
    assert cache.resolve(user.id, sid) is None


def test_unrelated_writes_keep_the_entry(setup: tuple[apsw.Connection, SessionCache, accounts.User, str, Path]) -> None:
    conn, cache, user, sid, _ = setup
    assert cache.resolve(user.id, sid) == user
    conn.execute("CREATE TABLE notes(x); INSERT INTO notes VALUES (1)")
    assert cache.resolve(user.id, sid) == user and len(cache) == 1
    assert cache.resolve(user.id, "no such session") is None
