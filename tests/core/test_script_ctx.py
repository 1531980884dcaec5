"""A script's ctx is the same whichever way it crosses into Starlark: packed into one JSON string
(the fast path for requests) or converted as a dict, value by value (triggers, and the fallback)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import starlark as sl

from wce.core.scripts import runtime

DUMP = '''
def handle_request(ctx):
    out = []
    for name in ["method", "path", "params", "query", "headers", "body", "json", "user"]:
        v = getattr(ctx, name)
        out.append([name, type(v), repr(v), len(v) if type(v) in ("string", "dict") else None])
        if type(v) == "dict":
            out.append([[type(k), repr(k), type(v[k]), repr(v[k])] for k in v.keys()])
            v["wce-check"] = "mutable"
            out.append(repr(v))
    out.append(repr(dir(ctx)))
    return out
'''


class NoHost:
    last_error = None

    def print(self, line: str) -> None:
        raise AssertionError(line)


def never() -> bool:
    return False


def via_dict(compiled: runtime.Compiled, raw: dict[str, Any]) -> Any:
    opts = sl.EvalOptions(check_cancelled=never, max_callstack_size=runtime.MAX_CALLSTACK)
    try:
        return compiled.module.call_with(opts, "wce_entry", raw).value
    except sl.StarlarkError as exc:
        return ("failed", runtime.describe(exc))
    except Exception as exc:  # a lone surrogate in a dict key fails in the binding, before Starlark
        return ("raised", type(exc).__name__, str(exc))


def via_call(compiled: runtime.Compiled, raw: dict[str, Any]) -> Any:
    try:
        return runtime.call(compiled, raw, NoHost(), never)
    except runtime.ScriptFailed as exc:
        return ("failed", (exc.detail, exc.line, exc.column))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def text(rnd: random.Random) -> str:
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, 0x10FFFF), (0xD800, 0xDFFF)]
    weights = [60, 10, 20, 0.2, 0.1]  # past the BMP or a lone surrogate: the dict path, as before
    out = []
    for _ in range(rnd.randint(0, 8)):
        lo, hi = rnd.choices(ranges, weights)[0]
        out.append(chr(rnd.randint(lo, hi)))
    odd = "\\ud800" if rnd.random() < 0.005 else rnd.choice(["", "", '"\\', "\u2028", "\x00"])
    return odd + "".join(out)


def request(rnd: random.Random) -> dict[str, Any]:
    def strings() -> dict[str, str]:
        return {text(rnd): text(rnd) for _ in range(rnd.randint(0, 4))}
    user = rnd.choice([None, {"id": rnd.choice([1, 2**40, 2**62]), "username": text(rnd), "role": "user"}])
    return {"method": rnd.choice(["GET", "POST"]), "path": "/" + text(rnd), "params": strings(),
            "query": strings(), "headers": strings(), "body": text(rnd),
            "json": rnd.choice([None, {"a": [1, 2.5, "é"]}, [10**30, -0.0, 1e300], "s"]), "user": user}


@pytest.mark.parametrize("kind", ["endpoint", "context"])
def test_the_packed_ctx_is_the_dict_ctx(kind: str) -> None:
    source = DUMP if kind == "endpoint" else DUMP.replace("handle_request", "context")
    compiled = runtime.compile_script(source, kind)
    rnd = random.Random(7)
    fixed = {"method": "GET", "path": "/p", "params": {"b": "2", "a": "1"}, "query": {"z": "", "y": "é"},
             "headers": {"host": "h", "user-agent": "wrk", "x-emoji": "😀"}, "body": '{"k": NaN}',
             "json": None, "user": {"id": 2, "username": "reader", "role": "user"}}
    cases = [fixed, {**fixed, "headers": {"host": "h"}}, {**fixed, "user": None, "params": {}}]
    cases += [request(rnd) for _ in range(400)]
    packed = 0
    for raw in cases:
        assert via_call(compiled, raw) == via_dict(compiled, raw), raw
        packed += runtime._pack(raw) is not None
    assert packed > 100  # many cases did take the packed path


def test_a_script_may_reuse_the_names_the_prelude_needs() -> None:
    source = 'json = 1\nlen = 2\nrange = 3\ndef handle_request(ctx):\n    return {"h": ctx.headers, "j": json}\n'
    compiled = runtime.compile_script(source, "endpoint")
    raw = {"method": "GET", "path": "/", "params": {}, "query": {}, "headers": {"a": "1", "b": "2"}, "body": "",
           "json": None, "user": None}
    assert runtime._pack(raw) is not None
    assert via_call(compiled, raw) == via_dict(compiled, raw) == {"h": {"a": "1", "b": "2"}, "j": 1}
