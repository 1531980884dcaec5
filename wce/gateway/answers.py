"""Error answers sent from the gateway's ASGI layer (the dispatcher, the editor, /import, /metrics):
wce.responses.error_answer, as ASGI messages. The platform app answers through the same function
(wce.gateway.platform), and so does every worker (wce.worker.http.error_reply).

The one rule for closing the connection: an error answered before the request's body was read to
its end closes it, so that the unread rest is never taken for the next request (nor does the
client go on uploading it). A handler that reads no body counts it unread unless the method is
GET or HEAD, which carry none here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from wce.responses import error_answer

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]

BODILESS = frozenset({"GET", "HEAD"})


def body_unread(scope: Scope) -> bool:
    """For a handler that reads no body: whether the request may have sent one."""
    return scope["method"] not in BODILESS


async def send_error(send: Send, exc: BaseException, unread: bool = False) -> None:
    """Answer with the contract's error body; `unread`: the request's body is not all read (the
    connection is then closed after the answer)."""
    status, headers, body = error_answer(exc, close=unread)
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
    await send({"type": "http.response.body", "body": body})
