"""Running slow, GIL-releasing work (argon2) in threads, a bounded number at a time.

argon2 needs 19 MiB per hash and a thread: two at a time keeps a burst of logins inside the
worker's memory cap and leaves a core for everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")
HASHING_THREADS = 2
_limiter: trio.CapacityLimiter | None = None


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run fn(*args) in a worker thread (never touching the connection)."""
    global _limiter
    if _limiter is None:
        _limiter = trio.CapacityLimiter(HASHING_THREADS)
    return await trio.to_thread.run_sync(fn, *args, limiter=_limiter)
