"""The fork server's protocol: the closed set of messages between a gateway and the zygote
(wce.worker.zygote; its client is wce.gateway.zygote_client), sans-IO.

One request per connection, one frame each way; a frame holds a msgpack map tagged by `op`:

    gateway -> Spawn(cenv)                          zygote -> Spawned(pid, new) | Refused
    gateway -> Fate(pid)                            zygote -> Ended(fate) | Refused
    gateway -> Admit(kind, ip)                      zygote -> Done | Refused (rate_limited, retry_after)
    gateway -> Create(cenv, username, password, ip) zygote -> Done | Refused (the domain error)
    gateway -> Import(cenv, username, password, ip) zygote -> Done | Refused (the domain error)
               + the uploaded file, open, as SCM_RIGHTS

`Spawned.new` says whether this request started the worker; `Ended.fate` is how a worker ended, as
wce.worker.fates records it (None while it runs or for a pid it does not know); `Refused` carries an
error code of wce.core.errors and a message that is safe to show. Both ends are the same release
(the gateway starts the zygote), so the protocol has no version of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from .errors import DecodeError, EncodeError, UnknownKind

MAX_FRAME = 1 << 20
ADMISSIONS = ("new", "import")  # what Admit counts, per client address


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(what)


def _strings(msg: Any, *names: str) -> None:
    for name in names:
        _check(isinstance(getattr(msg, name), str), f"{type(msg).__name__}: {name} must be a string")


@dataclass(frozen=True, slots=True)
class Spawn:
    """The cenv's live worker, started if it has none (it listens on `{run}/{cenv}.sock`)."""

    OP: ClassVar[str] = "spawn"
    cenv: str

    def __post_init__(self) -> None:
        _strings(self, "cenv")


@dataclass(frozen=True, slots=True)
class Fate:
    """How the worker `pid` ended, once it has."""

    OP: ClassVar[str] = "fate"
    pid: int

    def __post_init__(self) -> None:
        _check(type(self.pid) is int and self.pid > 0, "Fate: pid must be a positive int")


@dataclass(frozen=True, slots=True)
class Admit:
    """Count one cenv creation or import (`kind`) from the client address `ip` against the
    server-wide limit."""

    OP: ClassVar[str] = "admit"
    kind: str
    ip: str

    def __post_init__(self) -> None:
        _check(self.kind in ADMISSIONS, f"Admit: kind must be one of {ADMISSIONS}")
        _strings(self, "ip")


@dataclass(frozen=True, slots=True)
class _NewCenv:
    """What making a cenv takes: its id, its first (Create) or an existing (Import) admin's
    credentials, and the client's address."""

    cenv: str
    username: str
    password: str
    ip: str

    def __post_init__(self) -> None:
        _strings(self, "cenv", "username", "password", "ip")


@dataclass(frozen=True, slots=True)
class Create(_NewCenv):
    """Create the cenv's file with its first admin."""

    OP: ClassVar[str] = "create"


@dataclass(frozen=True, slots=True)
class Import(_NewCenv):
    """Check the uploaded cenv file (sent beside the frame) and install it as `cenv`, if `username`
    and `password` are those of an enabled admin of it."""

    OP: ClassVar[str] = "import"


@dataclass(frozen=True, slots=True)
class Spawned:
    """The cenv's worker; `new`: this request started it."""

    OP: ClassVar[str] = "spawned"
    pid: int
    new: bool

    def __post_init__(self) -> None:
        _check(type(self.pid) is int and self.pid > 0 and type(self.new) is bool, "Spawned: pid and new")


@dataclass(frozen=True, slots=True)
class Ended:
    """How a worker ended (wce.worker.fates), or None."""

    OP: ClassVar[str] = "ended"
    fate: dict[str, Any] | None

    def __post_init__(self) -> None:
        _check(self.fate is None or isinstance(self.fate, dict), "Ended: fate must be a map or None")


@dataclass(frozen=True, slots=True)
class Done:
    """The request was carried out."""

    OP: ClassVar[str] = "done"


@dataclass(frozen=True, slots=True)
class Refused:
    """The request was not carried out: an error code and a public message (`retry_after` seconds
    for `rate_limited`)."""

    OP: ClassVar[str] = "refused"
    code: str
    message: str
    retry_after: int | None = None

    def __post_init__(self) -> None:
        _strings(self, "code", "message")
        _check(self.retry_after is None or type(self.retry_after) is int, "Refused: retry_after must be an int")


Request = Spawn | Fate | Admit | Create | Import
Reply = Spawned | Ended | Done | Refused
Message = Request | Reply

OPS: dict[str, type[Message]] = {
    cls.OP: cls  # type: ignore[misc]
    for cls in (Spawn, Fate, Admit, Create, Import, Spawned, Ended, Done, Refused)
}
_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in OPS.values()}  # type: ignore[arg-type]


def encode(msg: Message) -> bytes:
    """A message as a payload (without the frame header)."""
    try:
        return msgpack.packb({"op": msg.OP, **{n: getattr(msg, n) for n in _FIELDS[type(msg)]}}, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise EncodeError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def decode(payload: bytes) -> Message:
    """A payload as a message; DecodeError (UnknownKind for an unknown op) for anything else."""
    try:
        obj: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"payload is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise DecodeError("payload is not a map with an op")
    cls = OPS.get(obj.pop("op"))
    if cls is None:
        raise UnknownKind("unknown op")
    names = _FIELDS[cls]
    if set(obj) != set(names):
        raise DecodeError(f"{cls.__name__} takes the fields {', '.join(names) or 'none'}")
    return cls(**obj)
