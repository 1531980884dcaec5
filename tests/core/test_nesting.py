"""How deeply a source nests (wce.core.scripts.nesting): the compiler recurses on the native stack,
and a deep enough source kills the process that compiles it (finding L1). Every kind of nesting
that crashed it, at the deepest MAX_DEPTH lets through, compiles in a child process; at three
times that it still does (the margin); past MAX_DEPTH the source is refused at its line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from wce.core.scripts import runtime
from wce.core.scripts.nesting import MAX_DEPTH, TooDeep, depth

ROOT = Path(__file__).resolve().parents[2]

# each nests n levels; the depth at which compiling crashed (8 MiB stack), measured in a child
NESTINGS: dict[str, tuple[Callable[[int], str], int]] = {
    "lists": (lambda n: "x = " + "[" * n + "1" + "]" * n, 2350),
    "dicts": (lambda n: "x = " + "{1: " * n + "1" + "}" * n, 2040),
    "calls": (lambda n: "def f(a):\n    return a\nx = " + "f(" * n + "1" + ")" * n, 2500),
    "indexes": (lambda n: "a = [0]\nx = " + "a[" * n + "0" + "]" * n, 3250),
    "trailing indexes": (lambda n: "def g(a):\n    return a" + "[0]" * n, 3250),
    "unary minus": (lambda n: "x = " + "-" * n + "1", 3250),
    "not": (lambda n: "x = " + "not " * n + "True", 3250),
    "sums": (lambda n: "x = " + " + ".join(["1"] * n), 3250),
    "lambdas": (lambda n: "x = " + "lambda: " * n + "1", 1040),
    "lambdas in lists": (lambda n: "x = " + "[lambda: " * n + "1" + "]" * n, 720),
    "comprehensions": (lambda n: "x = " + "[1 for _ in " * n + "[1]" + "]" * n, 2040),
    "blocks": (lambda n: "def g():\n" + "".join("    " * (i + 1) + "if True:\n" for i in range(n))
               + "    " * (n + 1) + "pass\n", 7700),
}
TAIL = "\ndef handle_request(ctx):\n    return {}\n"


def deepest_allowed(make: Callable[[int], str]) -> int:
    n = 1
    while depth(make(n + 1) + TAIL) <= MAX_DEPTH:
        n += 1
    return n


def compiles_in_a_child(source: str, check: bool) -> tuple[int, str]:
    """(exit status, output) of compiling source in a fresh process (with the check, or straight)."""
    code = ("import sys\nfrom wce.core.scripts import runtime\nimport starlark as sl\nsrc = sys.stdin.read()\n"
            + ("runtime.compile_script(src, 'endpoint')\n" if check else
               "m = sl.Module()\nsl.eval(m, sl.parse('a.star', src, runtime._dialect()), runtime._GLOBALS)\n")
            + "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], input=source, capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    return p.returncode, p.stdout + p.stderr[-500:]


@pytest.mark.parametrize("name", list(NESTINGS))
def test_the_deepest_source_allowed_compiles_with_room_to_spare(name: str) -> None:
    make, crashed_at = NESTINGS[name]
    n = deepest_allowed(make)
    assert n * 3 < crashed_at
    assert compiles_in_a_child(make(n) + TAIL, check=True) == (0, "ok\n")
    assert compiles_in_a_child(make(3 * n) + TAIL, check=False) == (0, "ok\n")
    with pytest.raises(runtime.ScriptSyntaxError) as refused:
        runtime.compile_script(make(min(crashed_at, 300)) + TAIL, "endpoint")  # blocks: 256 KiB is all a source may be
    assert refused.value.line is not None and "nested over 200 levels deep" in refused.value.detail


def test_long_flat_sources_are_shallow() -> None:
    assert depth("x = [" + ", ".join(["1"] * 100_000) + "]") == 1
    assert depth("x = {" + ", ".join(f'"k{i}": [1, -2, f(3)]' for i in range(10_000)) + "}") <= 4
    assert depth("x = 1\n" * 10_000) == 0
    source = Path(runtime.__file__).read_text()  # a long program of ordinary nesting (Python, close enough)
    assert depth(source) < 40


def test_brackets_in_strings_and_comments_do_not_count() -> None:
    assert depth('x = "((((((((" + r"\\"[[[[" + """{{{\n{{{"""  # ]]]]]]]]\n') == 2
    assert depth("x = '\\'(((('\n") == 0


def test_the_error_points_at_the_line_where_it_gets_too_deep() -> None:
    with pytest.raises(TooDeep) as deep:
        depth("a = 1\n\nb = (\n  " + "[" * 150 + "\n" + "]" * 150 + ")\nc = " + "-" * 300 + "1\n", MAX_DEPTH)
    assert deep.value.line == 6 and deep.value.depth == MAX_DEPTH + 1
