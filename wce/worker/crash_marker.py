"""What this worker was doing when it died: the crash marker.

A Starlark allocation that fails under the cenv's memory cap aborts the process (Rust's
`handle_alloc_error`: SIGABRT), and printing or encoding a value nested very deep overflows the
native stack (SIGSEGV): no Python code runs after either (finding L1). So, before tenant code runs,
the worker notes which request it runs it for, and which script, in one page of memory it shares
with the fork server (mapped MAP_SHARED before the fork: a write is a few stores, no system call),
and clears it after. The fork server reaps the worker, so it learns how it ended, and reads the
page then (`read`). A gateway whose requests the worker took with it asks the fork server
(op `fate`) and answers each of them by what the page says:

    the culprit (the request that was running tenant code)        503 naming the cause
    a request that had committed a write and was not answered      503, as before: its work is done
    any other request                                              sent once more, to the successor

and the successor records the crash against the script (wce.core.scripts.crashes), which disables
a script that keeps crashing its worker.

A request may have committed from its first commit (a commit hook on the cenv's connection, which
knows the request from a context variable) until its answer is written to its gateway: those
requests are copied into the page whenever tenant code starts, with their gateway's pid (request
ids are per connection). A script that hits the cap without killing the process (a Rust panic,
a MemoryError) is answered 503 and the worker retires: it is noted in the page's `panicked` slot,
so the successor counts it too.

Layout, little-endian:
    0   culprit: gateway pid (i32), request id (u64), script label (32 bytes: "endpoint:ID",
        "trigger:ID", "page:ID"), number of requests that may have committed (u32; UNKNOWN when
        they did not fit)
    48  panicked: script label (32 bytes)
    80  the requests that may have committed: gateway pid (i32), request id (u64), each
"""

from __future__ import annotations

import mmap
import re
import struct
from contextvars import ContextVar
from typing import Any, Protocol

MARK_SIZE = 4096
LABEL = re.compile(r"(endpoint|trigger|page):[0-9]{1,18}")

_CULPRIT = struct.Struct("<iQ32sI")
_PANICKED = struct.Struct("<32s")
_ENTRY = struct.Struct("<iQ")
_PANICKED_AT = 48
_ENTRIES_AT = 80
MAX_ENTRIES = (MARK_SIZE - _ENTRIES_AT) // _ENTRY.size
UNKNOWN = 0xFFFFFFFF


class _Channel(Protocol):
    queued: int
    flushed: int


class Request:
    """One request being answered by this worker, as the marker knows it."""

    __slots__ = ("gateway", "id", "committed", "channel", "end")

    def __init__(self, gateway: int, req_id: int) -> None:
        self.gateway = gateway
        self.id = req_id
        self.committed = False
        self.channel: _Channel | None = None  # set when it is over, if it committed
        self.end = 0  # where its answer ends on the channel (MessageChannel.queued)


_current: ContextVar[Request | None] = ContextVar("wce_request", default=None)
_committed: list[Request] = []  # requests that committed and may not be answered yet
_page: mmap.mmap | None = None
_inherited: list[dict[str, Any]] = []


def install(page: mmap.mmap, crashes: list[dict[str, Any]]) -> None:
    """In a new worker: its page (from the fork server), and the crashes of its predecessors the
    fork server hands over, for the tenant to record (`take_inherited`)."""
    global _page
    _page = page
    _inherited[:] = crashes


def take_inherited() -> list[dict[str, Any]]:
    """The predecessors' crashes, once."""
    out = list(_inherited)
    _inherited.clear()
    return out


def begin(gateway: int, req_id: int) -> Request:
    """A request starts (in its own task: the context variable is the task's)."""
    r = Request(gateway, req_id)
    _current.set(r)
    return r


def end(r: Request, channel: _Channel) -> None:
    """A request is over: its answer, if any, is queued on `channel` up to `channel.queued`."""
    if r.committed:
        r.channel, r.end = channel, channel.queued


def on_commit() -> bool:
    """The connection's commit hook: the current request has (maybe) committed. Never vetoes."""
    r = _current.get()
    if r is not None and not r.committed:
        r.committed = True
        _committed.append(r)
    return False


def running(label: str) -> bytes | None:
    """Tenant code is about to run for the current request: note it, with the requests that may
    have committed. What was noted before, for `done`."""
    page = _page
    if page is None:
        return None
    prev = page[:_CULPRIT.size]
    r = _current.get()
    count = _write_committed(page) if _committed else 0
    _CULPRIT.pack_into(page, 0, r.gateway if r else 0, r.id if r else 0, label.encode()[:32], count)
    return prev


def done(prev: bytes | None) -> None:
    """Tenant code returned: put back what was noted before (nothing, or an outer script's)."""
    if prev is not None and _page is not None:
        _page[:_CULPRIT.size] = prev


def panicked(label: str) -> None:
    """The script hit the memory cap and was answered 503: this worker retires, its successor
    counts the crash."""
    if _page is not None:
        _PANICKED.pack_into(_page, _PANICKED_AT, label.encode()[:32])


def _write_committed(page: mmap.mmap) -> int:
    """Forget the requests whose answers are written (or whose gateway is gone); write the others."""
    keep = [r for r in _committed if r.channel is None or not _answered(r)]
    _committed[:] = keep
    if len(keep) > MAX_ENTRIES:
        return UNKNOWN
    for i, r in enumerate(keep):
        _ENTRY.pack_into(page, _ENTRIES_AT + i * _ENTRY.size, r.gateway, r.id)
    return len(keep)


def _answered(r: Request) -> bool:
    ch = r.channel
    return ch is not None and (ch.flushed >= r.end or bool(getattr(ch, "_closed", False))
                               or getattr(ch, "_broken", None) is not None)


def read(page: mmap.mmap) -> dict[str, Any]:
    """What a dead worker's page says (in the fork server): `culprit` [gateway pid, request id,
    script label] or None, `committed` [[gateway pid, request id], ...] or None when unknown, and
    `panicked` (a script label) or None. A label that is not well formed is dropped: the process
    that wrote the page ran tenant code."""
    gateway, req_id, raw, count = _CULPRIT.unpack_from(page, 0)
    label = _label(raw)
    (panic_raw,) = _PANICKED.unpack_from(page, _PANICKED_AT)
    committed = None
    if count <= MAX_ENTRIES:
        committed = [list(_ENTRY.unpack_from(page, _ENTRIES_AT + i * _ENTRY.size)) for i in range(count)]
    return {"culprit": [gateway, req_id, label] if label else None, "committed": committed,
            "panicked": _label(panic_raw)}


def _label(raw: bytes) -> str | None:
    text = raw.rstrip(b"\0").decode("ascii", "replace")
    return text if LABEL.fullmatch(text) else None
