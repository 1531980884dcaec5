"""Compile and run Starlark scripts under a budget, in a sandbox.

The sandbox is the language plus what we add: starlark-pyo3 has no file system, network, clock,
environment or randomness of its own; `load()` is switched off in the dialect (a parse error at
save time); the globals are Starlark's standard set plus `json`, `struct`, and our builtins
`print`, `now`, `response` and the `db` functions, which call back into a Host.

Budgets: every call runs with `check_cancelled` (polled every ~1000 steps or calls) asking the
caller's `should_stop`, which raises Timeout once the request's CPU budget is spent, and a call
stack limit (deep and mutual recursion fail fast, long before the native stack). Builtins such as
`sorted(range(10**8))` are not interruptible: the worker's RLIMIT_CPU and RLIMIT_AS and the
gateway's hard deadline are the backstops.

A script's own lines keep their numbers: a short prelude is appended after the source, defining
`wce_entry`, which builds `ctx` (a struct) and calls the script's entry point (and, for endpoints
and page contexts, `wce_entry_packed`, which builds the same ctx from one JSON string: see _pack);
the few builtins the prelude needs are bound under `wce_` names before the source runs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import starlark as sl

from ..errors import Invalid, ScriptError, WceError
from . import nesting

MAX_CALLSTACK = 200
MAX_SOURCE = 256 * 1024

ENTRY = {"endpoint": "handle_request", "trigger": "on_change", "context": "context"}

_CTX = ('struct(method=raw["method"], path=raw["path"], params=raw["params"], query=raw["query"], '
        'headers=raw["headers"], body=raw["body"], json=raw["json"], user=raw["user"], db=wce_db)')
# The same ctx built from one JSON string (see _pack): converting a dict costs a Python call per
# value in it, decoding a string costs one call in all.
_PACKED_CTX = ('struct(method=r[0], path=r[1], params=wce_dict(r[2]), query=wce_dict(r[3]), '
               'headers=wce_dict(r[4]), body=r[5], json=body_json, user=None if r[6] == None else '
               '{"id": r[6][0], "username": r[6][1], "role": r[6][2]}, db=wce_db)')
_PACKED = ("\ndef wce_dict(flat):\n"
           "    return {flat[i]: flat[i + 1] for i in wce_range(0, wce_len(flat), 2)}\n"
           "\ndef wce_entry_packed(packed, body_json=None):\n"
           "    r = wce_json_decode(packed)\n"
           "    return %s(" + _PACKED_CTX + ")\n")
# bound before the script's own top level, which may reuse these names
_BEFORE = "wce_json_decode = json.decode\nwce_range = range\nwce_len = len\n"
PRELUDE = {
    "endpoint": f"\ndef wce_entry(raw):\n    return handle_request({_CTX})\n" + _PACKED % "handle_request",
    "context": f"\ndef wce_entry(raw):\n    return context({_CTX})\n" + _PACKED % "context",
    "trigger": '\ndef wce_entry(raw):\n    return on_change(struct(changes=raw["changes"], tables=raw["tables"], db=wce_db))\n',
}
DB_STRUCT = ("\nwce_db = struct(query=wce_db_query, get=wce_db_get, insert=wce_db_insert, "
             "update=wce_db_update, delete=wce_db_delete)\n")

_LOCATION = re.compile(r"--> [^:\n]+:(\d+):(\d+)")
_MESSAGE = re.compile(r"error: (.*)")


class Host(Protocol):
    """What a running script can reach; the worker implements it for each call."""

    def db_query(self, sql: str, args: list[Any]) -> list[dict[str, Any]]: ...
    def db_get(self, table: str, pk: Any) -> dict[str, Any] | None: ...
    def db_insert(self, table: str, row: dict[str, Any]) -> dict[str, Any]: ...
    def db_update(self, table: str, pk: Any, changes: dict[str, Any]) -> dict[str, Any]: ...
    def db_delete(self, table: str, pk: Any) -> None: ...
    def print(self, line: str) -> None: ...


class ScriptSyntaxError(Invalid):
    """The source does not compile; carries the line and column for the editor."""

    def __init__(self, message: str, line: int | None, column: int | None) -> None:
        where = f"line {line}, column {column}: " if line else ""
        super().__init__(where + message)
        self.line, self.column, self.detail = line, column, message


class ScriptFailed(ScriptError):
    """The script raised or returned something unusable; `detail` is for admins only."""

    def __init__(self, detail: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__("the script failed")
        self.detail, self.line, self.column = detail, line, column


def describe(err: BaseException) -> tuple[str, int | None, int | None]:
    """The first error line of a Starlark error and its position in the script."""
    text = str(err)
    m = _MESSAGE.search(text)
    msg = m.group(1).strip() if m else text.strip().splitlines()[0] if text.strip() else type(err).__name__
    locs = _LOCATION.findall(text)
    if locs:
        line, col = locs[-1]
        return msg[:500], int(line), int(col)
    return msg[:500], None, None


# The host of the call in progress. Calls never overlap: the worker runs one at a time on its thread.
_host: Host | None = None


def _need_host() -> Host:
    if _host is None:
        raise RuntimeError("no script is running")
    return _host


def _print(*args: Any, sep: str = " ", **_: Any) -> None:
    _need_host().print(sep.join(a if isinstance(a, str) else json.dumps(a, default=str) for a in args))


def _response(status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
              content_type: str | None = None) -> dict[str, Any]:
    return {"__wce_response__": True, "status": status, "body": body, "headers": headers or {},
            "content_type": content_type}


BUILTINS: dict[str, Callable[..., Any]] = {
    "print": _print,
    "now": lambda: time.time(),
    "response": _response,
    "wce_db_query": lambda sql, *args: _need_host().db_query(sql, list(args)),
    "wce_db_get": lambda table, pk: _need_host().db_get(table, pk),
    "wce_db_insert": lambda table, row: _need_host().db_insert(table, row),
    "wce_db_update": lambda table, pk, changes: _need_host().db_update(table, pk, changes),
    "wce_db_delete": lambda table, pk: _need_host().db_delete(table, pk),
}


def _dialect() -> sl.Dialect:
    d = sl.Dialect.standard()
    d.enable_load = False
    d.enable_f_strings = True
    d.enable_lambda = True
    d.enable_keyword_only_arguments = True
    return d


_GLOBALS = sl.Globals.extended_by([sl.LibraryExtension.Json, sl.LibraryExtension.StructType])


@dataclass(frozen=True, slots=True)
class Compiled:
    """A script ready to call, compiled once and reused (its globals are frozen: no state leaks
    from one call to the next)."""

    kind: str
    module: sl.FrozenModule


def compile_script(source: str, kind: str, filename: str = "script.star") -> Compiled:
    """Parse, evaluate the top level and freeze; ScriptSyntaxError (422) with line and column."""
    if kind not in ENTRY:
        raise ValueError(kind)
    if not isinstance(source, str) or not source.strip():
        raise ScriptSyntaxError("the source is empty", None, None)
    if len(source) > MAX_SOURCE:
        raise ScriptSyntaxError(f"the source is over {MAX_SOURCE // 1024} KiB", None, None)
    reserved = _RESERVED.search(source)
    if reserved:
        raise ScriptSyntaxError("names starting with wce_ are reserved", *_position(source, reserved.start()))
    try:
        nesting.depth(source, nesting.MAX_DEPTH)  # deeper, compiling could crash the process
    except nesting.TooDeep as exc:
        raise ScriptSyntaxError(f"nested over {nesting.MAX_DEPTH} levels deep (brackets, operators, calls, lambdas"
                                ", blocks): split it into smaller expressions or functions", exc.line, exc.column) from None
    try:
        ast = sl.parse(filename, source, _dialect())
    except sl.StarlarkError as exc:
        msg, line, col = describe(exc)
        if (line, col) == (1, 1) and ("new line" in msg or "end of file" in msg):
            # starlark-rust reports errors at the end of the input as 1:1; point at the last line
            lines = source.rstrip("\n").split("\n")
            line, col = len(lines), len(lines[-1]) + 1
        raise ScriptSyntaxError(msg, line, col) from None
    module = sl.Module()
    for name, fn in BUILTINS.items():
        module.add_callable(name, fn)
    try:
        sl.eval(module, sl.parse(filename + ":before", _BEFORE, _dialect()), _GLOBALS)
        sl.eval(module, ast, _GLOBALS)
    except sl.StarlarkError as exc:
        raise ScriptSyntaxError(*describe(exc)) from None
    except BaseException as exc:  # a top level that exhausts memory must not take the worker down
        raise ScriptSyntaxError(f"the top level failed: {type(exc).__name__}", None, None) from None
    entry = ENTRY[kind]
    try:
        value = module[entry]
    except sl.StarlarkError:
        value = "function"  # functions cannot be serialised out of a module: that is the tell
    if value is None:
        raise ScriptSyntaxError(f"the script must define {entry}(...)", None, None)
    if value != "function":
        raise ScriptSyntaxError(f"{entry} must be a function", None, None)
    try:
        tail = sl.parse(filename + ":prelude", DB_STRUCT + PRELUDE[kind], _dialect())
        sl.eval(module, tail, _GLOBALS)
    except sl.StarlarkError as exc:
        raise ScriptSyntaxError(*describe(exc)) from None
    return Compiled(kind, module.freeze())


_RESERVED = re.compile(r"(?<![A-Za-z0-9_\"'])wce_")


def _position(source: str, offset: int) -> tuple[int, int]:
    before = source[:offset]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def call(compiled: Compiled, raw: dict[str, Any], host: Host, should_stop: Callable[[], bool]) -> Any:
    """Run the script's entry point on `raw` with `host` as its world.

    `should_stop` is polled during the run; it raises (e.g. Timeout) to end it. WceErrors from the
    host (a refused db call) and from should_stop pass through with their type; any other failure
    becomes ScriptFailed with the script's own message and position.
    """
    global _host
    _host = host
    try:
        opts = sl.EvalOptions(check_cancelled=should_stop, max_callstack_size=MAX_CALLSTACK)
        packed = _pack(raw) if compiled.kind != "trigger" else None
        if packed is None:
            return compiled.module.call_with(opts, "wce_entry", raw).value
        body_json = raw["json"]
        args = (packed,) if body_json is None else (packed, body_json)  # None crosses by default
        return compiled.module.call_with(opts, "wce_entry_packed", *args).value
    except WceError:
        raise
    except sl.StarlarkError as exc:
        cause = _host_error(host)
        if cause is not None:
            raise cause from None
        raise ScriptFailed(*describe(exc)) from None
    finally:
        _host = None


def _pack(raw: dict[str, Any]) -> str | None:
    """A request's ctx but its `json` as one JSON string for `wce_entry_packed`, or None to pass
    the dict itself.

    Same values, same dicts in the same order: every value here is a string (or the user's id),
    and the binding converts each string of a dict by way of `json.dumps` and the same JSON
    decoder as Starlark's `json.decode`. A string needing a \\u surrogate escape (a character
    beyond the BMP, or a lone surrogate, which the decoder refuses) keeps the dict path, so
    that it fails, if at all, as before. `json` (a parsed body: any numbers) is always passed
    as it is.
    """
    user = raw["user"]
    try:
        packed = json.dumps([raw["method"], raw["path"], _flat(raw["params"]), _flat(raw["query"]),
                             _flat(raw["headers"]), raw["body"],
                             None if user is None else [user["id"], user["username"], user["role"]]])
    except (TypeError, ValueError):
        return None
    return None if "\\ud" in packed else packed


def _flat(d: dict[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += (k, v)
    return out


def _host_error(host: Host) -> WceError | None:
    """A WceError a builtin raised is turned into a StarlarkError by the binding; the host keeps it."""
    err = getattr(host, "last_error", None)
    return err if isinstance(err, WceError) else None
