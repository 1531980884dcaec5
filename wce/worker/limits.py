"""The caps a worker puts on itself before it runs any tenant work.

- memory: RLIMIT_AS (the fork server runs with MALLOC_ARENA_MAX=1 so threads do not each reserve
  a 64 MiB malloc arena, which would exhaust a 256 MiB address space with a handful of threads);
- CPU: RLIMIT_CPU's soft limit kept, before each request, at "CPU used so far + this request's
  budget" (whole seconds: the kernel's resolution). SIGXCPU only sets a flag: raising from a signal
  handler inside trio's machinery could corrupt it, so long-running code polls the flag (Starlark
  and SQL, with the finer per-request check of over_budget), and the gateway's hard deadline kills
  a worker stuck in C;
- database size: PRAGMA max_page_count (in wce.core.db).
"""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType

import apsw

from wce.core.errors import Timeout

_cpu_exceeded = False
_armed: tuple[int, float] | None = None  # (soft limit set, budget it was set for)


def _on_xcpu(signum: int, frame: FrameType | None) -> None:
    global _cpu_exceeded
    _cpu_exceeded = True


def apply_memory(memory_mb: int, *, final: bool = True) -> None:
    """Cap the address space of this process. `final=False` sets the soft limit only, which this
    process may still raise: a worker caps itself at the server's ceiling before it opens its file,
    then at the cenv's own cap (an exception may be higher) once it has read it."""
    limit = memory_mb << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if not final:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit if hard == resource.RLIM_INFINITY else hard))


def install_cpu_handler() -> None:
    """Turn SIGXCPU into a flag (see module docstring)."""
    signal.signal(signal.SIGXCPU, _on_xcpu)


def arm_cpu(budget_ms: int) -> None:
    """Allow this process `budget_ms` more CPU (rounded up to whole seconds, at least 1) before SIGXCPU.

    The soft limit is `ceil(used + budget)`. It is set again only when the room left under it is
    less than one budget: the room then lies in [budget, budget + 1 s) just as after a fresh
    arming, since it only shrinks. So a request costs one getrusage() instead of three syscalls,
    and the limit it runs under is the same.
    """
    global _cpu_exceeded, _armed
    budget = max(1.0, budget_ms / 1000)
    r = resource.getrusage(resource.RUSAGE_SELF)
    used = r.ru_utime + r.ru_stime
    if _armed is not None and _armed[1] == budget and used + budget <= _armed[0] and not _cpu_exceeded:
        return
    _cpu_exceeded = False
    soft = math.ceil(used + budget)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    _armed = (soft, budget)


def cpu_exceeded() -> bool:
    """True once the current budget is spent."""
    return _cpu_exceeded


SQL_PROGRESS_STEPS = 10_000  # SQLite instructions between two looks at the budget (tens of µs)
_SQL_BUDGET = "wce.worker.limits.sql_budget"  # the progress handler's id: scripts' and renders' are others


def over_budget(budget_ms: int) -> Callable[[], bool]:
    """A check that turns true once work started now has used `budget_ms` of this thread's CPU,
    three times that (at least one second more) of wall time, or the process its RLIMIT_CPU
    budget (cpu_exceeded): the budget of a script call (wce.worker.scripting.execute) and of the
    data API's SQL (sql_budget)."""
    budget = budget_ms / 1000
    cpu0, wall0 = time.thread_time(), time.monotonic()
    wall_budget = max(budget * 3, budget + 1.0)

    def over() -> bool:
        return (_cpu_exceeded or time.thread_time() - cpu0 > budget
                or time.monotonic() - wall0 > wall_budget)
    return over


@contextlib.contextmanager
def sql_budget(conn: apsw.Connection, budget_ms: int) -> Iterator[None]:
    """Run the block's SQL under a CPU budget of its own: SQLite's progress handler stops a
    statement past it, and the block raises Timeout (504) instead of running until the gateway's
    hard deadline kills the worker. Its handler has its own id, so a script's or a render's
    budget inside the block keeps working."""
    conn.set_progress_handler(over_budget(budget_ms), SQL_PROGRESS_STEPS, id=_SQL_BUDGET)
    try:
        yield
    except apsw.InterruptError:
        raise Timeout("the request's SQL ran past its CPU budget") from None
    finally:
        conn.set_progress_handler(None, id=_SQL_BUDGET)
