"""Messages <-> msgpack payloads, sans-IO.

A payload is a msgpack array `[kind, field, ...]` in the dataclass's field order: compact, and
decoding never trusts the peer: map keys must be strings (msgpack's strict_map_key), the kind must
be known, the arity must match and each message checks its own field types.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from .errors import DecodeError, EncodeError, UnknownKind
from .messages import KINDS, Message, Request

_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in KINDS.values()  # type: ignore[arg-type]
}


def encode(msg: Message) -> bytes:
    """Encode a message to a payload (without the frame header)."""
    names = _FIELDS[type(msg)]
    try:
        if type(msg) is Request:  # the hot path, spelled out
            r = msg
            return msgpack.packb(
                [2, r.id, r.cenv, r.method, r.path, r.query, r.headers, r.body, r.client, r.scheme, r.identity],
                use_bin_type=True,
            )
        return msgpack.packb([msg.KIND, *(getattr(msg, n) for n in names)], use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise EncodeError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def decode(payload: bytes) -> Message:
    """Decode one payload; raise DecodeError (or UnknownKind) for anything that is not a message."""
    try:
        obj: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"payload is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise DecodeError("payload is not a [kind, ...] array")
    cls = KINDS.get(obj[0])
    if cls is None:
        raise UnknownKind(f"unknown message kind {obj[0]!r}")
    names = _FIELDS[cls]
    if len(obj) - 1 != len(names):
        raise DecodeError(f"{cls.__name__} takes {len(names)} fields, got {len(obj) - 1}")
    args = obj[1:]
    if cls is Request or "headers" in names:
        i = names.index("headers")
        if isinstance(args[i], list):
            args[i] = [tuple(p) if isinstance(p, list) else p for p in args[i]]
    try:
        return cls(*args)
    except TypeError as exc:
        raise DecodeError(f"bad {cls.__name__}: {exc}") from None
