"""`GET /{cenv}/api/export`: a consistent copy of the cenv file, for its admins.

The same code as `wce export` (wce.core.backup): an online backup taken on a connection of its
own in a thread, so this worker keeps answering (and writing) meanwhile. The copy is an unlinked
temporary file in the worker's scratch folder (the one folder its sandbox lets it create files in),
streamed in pieces with its length announced, so a cut-off download is visible as such and nothing
is left on disk whatever happens.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import trio

from wce.core import audit, backup
from wce.core.db import transaction

from . import sandbox
from .http import Call, StreamReply
from .routes import Route

CHUNK = 256 << 10


class FileStream:
    """A streamed body read from an open file descriptor, closed however the stream ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes, a piece at a time."""
        while True:
            data = os.pread(self.fd, CHUNK, self.offset)
            if not data:
                return
            self.offset += len(data)
            yield data
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the descriptor (the file was unlinked when opened: this frees it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def export(call: Call) -> StreamReply:
    """The cenv file as `application/vnd.sqlite3`, as an attachment."""
    t = call.tenant
    fd, size = await trio.to_thread.run_sync(backup.open_snapshot, t.path.parent, t.cenv_id,
                                             sandbox.scratch_path(t.config, t.cenv_id))
    try:
        with transaction(t.conn):
            audit.record(t.conn, "cenv.export", actor=call.username, target=t.cenv_id, ip=call.client)
    except BaseException:
        os.close(fd)
        raise
    headers = [
        ("content-type", "application/vnd.sqlite3"),
        ("content-disposition", f'attachment; filename="{t.cenv_id}.sqlite"'),
        ("content-length", str(size)),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ]
    return StreamReply(200, headers, FileStream(fd))


ROUTES = (
    Route("GET", "/api/export", export, "admin", "a consistent copy of the cenv file",
          media="application/vnd.sqlite3", answer={"type": "string", "format": "binary"}),
)
