"""How deeply a Starlark source nests, measured before it is parsed.

starlark-rust compiles an expression by recursion on the native stack, a level per nesting, and a
deep enough one overflows it: SIGSEGV, the whole worker gone, nothing Python can catch (finding
L1). Measured in a child process (8 MiB main-thread stack, compile_script), the smallest depths
that crashed were about 720 for `[lambda: [lambda: ...]]`, 1,040 for `lambda: lambda: ...`, 2,040
for dicts and comprehensions, 2,350 for lists, 2,500 for calls, 3,250 for `1 + 1 + ...`, `- - x`,
`not not x` and `a[0][0]...`, and 7,700 for blocks inside blocks. MAX_DEPTH is far below all of
them: tests/core/test_nesting.py compiles each at MAX_DEPTH in a child process.

`depth` bounds the depth from above from the tokens alone. In a bracket (or a statement), each
comma-separated item counts one level per operator, keyword (`lambda`, `if`, `not`, `and`, ...),
dot and trailing bracket (a call, an index), plus its deepest bracket, plus one for the bracket
itself; a statement adds its indentation. So `[1, 2, 3, ...]` is 1 deep however long it is,
`1 + 2 + ... + 150` 149 deep, and no source that could crash the compiler stays under MAX_DEPTH.
Strings are skipped as starlark-rust's lexer reads them (a backslash escapes the next character,
raw strings too).
"""

from __future__ import annotations

import re

MAX_DEPTH = 200

_TOKEN = re.compile(r"""
    (?P<string>[rRbBfF]{0,2}(?:'''|\"\"\"|'|"))
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n[ \t]*)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9][0-9A-Za-z_.]*)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<comma>[,;])
  | (?P<continuation>\\\r?\n)
  | (?P<op>\*\*|//|<<|>>|<=|>=|==|!=|->|[-+*/%&|^~<>.@])
  | (?P<space>[ \t\r\f]+)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "if", "else", "lambda", "for"})
_OPERAND_END = frozenset({"word", "number", "string", "close"})


class TooDeep(Exception):
    """The source nests past the limit; where it first does (1-based line and column)."""

    def __init__(self, depth: int, line: int, column: int) -> None:
        super().__init__(f"nested {depth} deep at line {line}, column {column}")
        self.depth, self.line, self.column = depth, line, column


class _Level:
    """A bracket being read (or the statement): `base` is the depth of the bracket itself."""

    __slots__ = ("base", "ops", "inner", "best")

    def __init__(self, base: int) -> None:
        self.base = base
        self.ops = 0  # levels counted in the current item
        self.inner = 0  # the deepest bracket closed in the current item
        self.best = 0  # the deepest item finished


def depth(source: str, limit: int | None = None) -> int:
    """An upper bound of how deeply `source` nests; with `limit`, TooDeep once it is passed."""
    top = _Level(0)
    stack = [top]
    indents = [0]
    deepest = 0
    prev = "newline"
    pos, n = 0, len(source)
    keywords, operand_end = _KEYWORDS, _OPERAND_END
    while pos < n:
        m = _TOKEN.match(source, pos)
        assert m is not None  # `other` matches any character
        kind, end = m.lastgroup, m.end()
        if kind == "space" or kind == "comment" or kind == "continuation":
            pos = end
            continue
        if kind == "word":
            if m.group() in keywords:
                top.ops += 1
            else:
                prev = kind
                pos = end
                continue
        elif kind == "string":
            end = _string_end(source, m)
        elif kind == "newline":
            if len(stack) == 1 and end < n and source[end] not in "\r\n#":
                width = end - pos - 1  # a statement begins: its indentation
                while width < indents[-1]:
                    indents.pop()
                if width > indents[-1]:
                    indents.append(width)
                top = stack[0] = _Level(len(indents) - 1)
            pos = end
            continue
        elif kind == "open":
            if prev in operand_end:
                top.ops += 1  # a call or an index
            top = _Level(top.base + top.ops + 1)
            stack.append(top)
        elif kind == "close":
            if len(stack) > 1:
                inner = 1 + max(top.best, top.ops + top.inner)
                stack.pop()
                top = stack[-1]
                top.inner = max(top.inner, inner)
        elif kind == "comma":
            top.best, top.ops, top.inner = max(top.best, top.ops + top.inner), 0, 0
        elif kind == "op":
            top.ops += 1
        prev = kind
        here = top.base + max(top.best, top.ops + top.inner)
        if here > deepest:
            deepest = here
            if limit is not None and deepest > limit:
                line = source.count("\n", 0, pos) + 1
                raise TooDeep(deepest, line, pos - (source.rfind("\n", 0, pos) + 1) + 1)
        pos = end
    return deepest


def _string_end(source: str, m: re.Match[str]) -> int:
    """Where the string literal that m begins ends (the end of the line for an unfinished
    one-line string, the end of the source for an unfinished long one)."""
    quote = m.group().lstrip("rRbBfF")
    i, n = m.end(), len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            i += 2
        elif source.startswith(quote, i):
            return i + len(quote)
        elif c == "\n" and len(quote) == 1:
            return i
        else:
            i += 1
    return n
