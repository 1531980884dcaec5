"""Domain errors: each has a stable `code` and a message that is safe to show to the caller.

    WceError                 code "internal"
    ├── BadRequest           "bad_request"    malformed input
    ├── Unauthenticated      "unauthenticated" no valid identity
    │   └── InvalidCredentials "invalid_credentials"
    ├── Forbidden            "forbidden"      identity known, not allowed
    ├── NotFound             "not_found"
    ├── MethodNotAllowed     "method_not_allowed"
    ├── Conflict             "conflict"       e.g. a name already taken
    ├── TooLarge             "too_large"
    ├── Invalid              "invalid"        well-formed but rejected (a SQL error in DDL, ...)
    ├── RateLimited          "rate_limited"   carries `retry_after` seconds
    ├── ScriptError          "script_error"
    ├── Unavailable          "unavailable"
    └── Timeout              "timeout"

The HTTP status of each code is decided in one place, `wce.responses.STATUS`, which also turns a
code back into its class. Internal details (paths, tracebacks, SQL of our own tables) never go into
a message.
"""

from __future__ import annotations

from typing import ClassVar


class WceError(Exception):
    """Base of every error the caller may see; `message` is public."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message


class BadRequest(WceError):
    """The request is malformed (bad JSON, missing field, wrong type)."""

    code = "bad_request"


class Unauthenticated(WceError):
    """No valid identity: missing, expired, revoked or forged token."""

    code = "unauthenticated"


class InvalidCredentials(Unauthenticated):
    """Login failed; the same answer for an unknown user and a wrong password."""

    code = "invalid_credentials"


class Forbidden(WceError):
    """The caller is known but not allowed to do this."""

    code = "forbidden"


class NotFound(WceError):
    """No such thing, or one the caller may not know about."""

    code = "not_found"


class MethodNotAllowed(WceError):
    """The resource exists but not with this method; `allow` lists the methods it has."""

    code = "method_not_allowed"

    def __init__(self, message: str = "method not allowed", allow: list[str] | None = None) -> None:
        super().__init__(message)
        self.allow = sorted(allow or [])


class Conflict(WceError):
    """The change clashes with existing state (a username taken, the last admin...)."""

    code = "conflict"


class TooLarge(WceError):
    """A body or value over its size limit."""

    code = "too_large"


class Invalid(WceError):
    """Well-formed but rejected."""

    code = "invalid"


class RateLimited(WceError):
    """Too many attempts; try again after `retry_after` seconds."""

    code = "rate_limited"

    def __init__(self, message: str = "too many requests", retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class ScriptError(WceError):
    """A tenant script failed."""

    code = "script_error"


class Unavailable(WceError):
    """The cenv cannot serve now (worker restarting, memory cap hit)."""

    code = "unavailable"


class Timeout(WceError):
    """Work ran past its budget."""

    code = "timeout"

