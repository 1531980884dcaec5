"""A cenv's own settings (`_wce_config`): the keys, their defaults, and validation.

A key absent from the table takes the server-wide default, so a cenv follows the operator's
defaults until its admin sets a value of its own. The resource keys (CAPS) are different: the
operator's value is a ceiling (wce.core.caps), which the cenv may lower and never raise. A value
above it is refused when written and clamped when read, so one stored before the ceiling existed,
or before the operator lowered it, is never obeyed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import apsw

from .errors import BadRequest, Invalid


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: its default and how to check a new value."""

    default: Any
    check: Callable[[Any], bool]
    rule: str


def _int_range(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and lo <= v <= hi


ROLE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")

# The resource caps: (lowest value, highest any ceiling may be). The ceiling itself is the server's
# flag or the operator's exception for the cenv.
CAPS: dict[str, tuple[int, int]] = {
    "memory_mb": (64, 16384),
    "cpu_ms_per_request": (10, 600_000),
    "max_db_mb": (1, 1 << 20),
}

KEYS: dict[str, Key] = {
    "registration": Key("closed", lambda v: v in ("closed", "open"), "'closed' or 'open'"),
    "session_ttl_seconds": Key(7 * 86400, _int_range(60, 365 * 86400), "an integer from 60 to 31536000"),
    "default_role": Key(
        "user",
        lambda v: isinstance(v, str) and 0 < len(v) <= 32 and set(v) <= ROLE_CHARS and v not in ("admin", "anon"),
        "a role name of lowercase letters, digits, '_' or '-', not 'admin' or 'anon'",
    ),
    "rate_limit_per_minute": Key(0, _int_range(0, 1_000_000), "an integer from 0 (no limit) to 1000000"),
    "memory_mb": Key(256, _int_range(*CAPS["memory_mb"]), "an integer from 64"),
    "cpu_ms_per_request": Key(2000, _int_range(*CAPS["cpu_ms_per_request"]), "an integer from 10"),
    "max_db_mb": Key(1024, _int_range(*CAPS["max_db_mb"]), "an integer from 1"),
}


def validate(key: str, value: Any, ceilings: Mapping[str, int] | None = None) -> Any:
    """Return the value if it is acceptable for key, else raise BadRequest naming the rule, or
    Invalid naming the ceiling for a cap above it."""
    spec = KEYS.get(key)
    if spec is None:
        raise BadRequest(f"unknown config key {key!r}")
    if key in CAPS:
        lo, hi = CAPS[key]
        if type(value) is not int or value < lo:
            raise BadRequest(f"config {key} must be {spec.rule}")
        ceiling = min(hi, (ceilings or {}).get(key, hi))
        if value > ceiling:
            raise Invalid(f"{key} may be at most {ceiling} on this server")
        return value
    if not spec.check(value):
        raise BadRequest(f"config {key} must be {spec.rule}")
    return value


def read(conn: apsw.Connection, ceilings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting: the cenv's own value, else the server default, else the built-in default.
    A cap is at most its ceiling, and the ceiling when the cenv set none."""
    out = {k: spec.default for k, spec in KEYS.items()}
    if ceilings:
        out.update({k: v for k, v in ceilings.items() if k in KEYS})
    for key, raw in conn.execute("SELECT key, value FROM _wce_config"):
        if key in KEYS:
            try:
                value = validate(key, json.loads(raw))
            except (ValueError, BadRequest, Invalid):
                continue  # a hand-edited bad value falls back to the default rather than breaking the cenv
            out[key] = min(value, out[key]) if key in CAPS else value
    return out


def write(conn: apsw.Connection, key: str, value: Any, ceilings: Mapping[str, int] | None = None) -> None:
    """Store one setting (validated)."""
    validate(key, value, ceilings)
    conn.execute(
        "INSERT INTO _wce_config(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value)),
    )
