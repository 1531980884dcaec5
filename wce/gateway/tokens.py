"""Verified tokens, cached: pyjwt costs ~30-75 µs a call, a dict lookup ~0.

A cache belongs to one worker handle (one cenv, one secret), and holds only tokens whose session
that worker has accepted: a cenv's owner can sign any number of tokens with its own secret (its
export holds it), and those name no live session. So `verify` never stores; the gateway sends a
token it verified but does not know with the request, and the worker's `session` Notice for that
request (wce.gateway.client) makes `add` store it. The bytes held are bounded for all cenvs
together by the gateway's one token Budget (wce.gateway.budget), least recently used first.

Entries are checked for expiry on every hit; revocation is the worker's job (it checks the session
on every request).
"""

from __future__ import annotations

import time

from wce.core.auth import Claims, verify_token

from .budget import Budget

CACHE_BYTES = 8 << 20  # verified tokens one gateway process keeps, all cenvs together
ENTRY_OVERHEAD = 400  # the objects around a token's text, roughly (dict slot, entry, Claims)


class _Verified:
    """A cached token's claims (hashed by identity: the Budget's LRU key)."""

    __slots__ = ("claims", "expires_at")

    def __init__(self, claims: Claims) -> None:
        self.claims = claims
        self.expires_at = claims.expires_at


class TokenCache:
    """token -> Claims for tokens that verified with this cenv's secret and named a live session."""

    def __init__(self, secret: bytes, cenv: str, budget: Budget | None = None) -> None:
        self._secret = secret
        self._cenv = cenv
        self._budget = budget if budget is not None else Budget(CACHE_BYTES)
        self._cache: dict[str, _Verified] = {}

    def cached(self, token: str) -> Claims | None:
        """The claims of a token this cache holds and that has not expired; None otherwise."""
        hit = self._cache.get(token)
        if hit is not None and hit.expires_at > time.time():
            self._budget.touch(hit)
            return hit.claims
        return None

    def verify(self, token: str) -> Claims:
        """Claims of a valid token, not stored; raises Unauthenticated for an invalid or expired one."""
        return verify_token(self._secret, self._cenv, token)

    def add(self, token: str, claims: Claims) -> None:
        """Keep a verified token whose session the worker accepted."""
        size = len(token) + len(claims.session_id) + len(claims.role) + ENTRY_OVERHEAD
        self._budget.put(self._cache, token, _Verified(claims), size)

    def clear(self) -> None:
        """Forget every token (the worker is gone: its successor may have another secret)."""
        self._budget.release(self._cache)

    def __len__(self) -> int:
        return len(self._cache)
