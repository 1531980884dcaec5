"""Password hashing and signed session tokens: pure functions, no database.

argon2id with OWASP's minimum (19 MiB, t=2, p=1): it fits under a worker's 256 MiB address-space
cap with room to spare, where argon2-cffi's default (64 MiB, p=4) does not.

Tokens are HS256 JWTs signed with the cenv's own 256-bit secret; `aud` is the cenv id, so a token
of one cenv is worthless at another even if both secrets were somehow equal.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .errors import BadRequest, Unauthenticated, Unavailable

ISSUER = "wce"
MAX_TOKEN_BYTES = 4096

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_dummy_hash: str | None = None


def _dummy() -> str:
    """A hash checked when the username does not exist, so both failures cost the same time."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_hex(16))
    return _dummy_hash

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_username(username: object) -> str:
    """Return the username if acceptable: 1-64 of letters, digits, `_.-`, starting alphanumeric."""
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise BadRequest("username must be 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit")
    return username


def check_password(password: object) -> str:
    """Return the password if acceptable: 8 to 1024 characters."""
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BadRequest(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    """An argon2id hash (slow on purpose: call it off the event loop)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if the password matches; a None hash (unknown user) costs the same and fails.

    A failure to compute (e.g. out of memory under the worker's cap) raises Unavailable: it must
    never look like a wrong password.
    """
    try:
        return _hasher.verify(password_hash or _dummy(), password) and password_hash is not None
    except (VerifyMismatchError, InvalidHashError):
        return False
    except VerificationError as exc:
        raise Unavailable("cannot check passwords right now; try again") from exc


def needs_rehash(password_hash: str) -> bool:
    """True if the hash was made with other parameters than today's."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def new_session_id() -> str:
    """A session id (the token's `jti`)."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says."""

    user_id: int
    session_id: str
    role: str
    expires_at: int


def make_token(secret: bytes, cenv: str, user_id: int, role: str, session_id: str, ttl: int,
               now: float | None = None) -> tuple[str, int]:
    """A signed token and its expiry (unix seconds)."""
    iat = int(now if now is not None else time.time())
    exp = iat + ttl
    token = jwt.encode(
        {"iss": ISSUER, "aud": cenv, "sub": str(user_id), "jti": session_id, "role": role, "iat": iat, "exp": exp},
        secret,
        algorithm="HS256",
    )
    return token, exp


def verify_token(secret: bytes, cenv: str, token: str) -> Claims:
    """Check signature (HS256 only), issuer, audience and expiry; raise Unauthenticated otherwise.

    Revocation is not checked here: that needs the cenv's session table.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("invalid token")
    try:
        c = jwt.decode(
            token, secret, algorithms=["HS256"], audience=cenv, issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
        )
        return Claims(int(c["sub"]), str(c["jti"]), str(c.get("role", "")), int(c["exp"]))
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
        raise Unauthenticated("invalid token") from None
