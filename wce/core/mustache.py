"""Mustache templates: our own spec-compliant engine, pure stdlib.

Implements the core Mustache spec (interpolation, sections, inverted sections, comments,
partials, set delimiters) plus the optional inheritance (``{{<parent}}`` / ``{{$block}}``)
and dynamic-name (``{{>*name}}``) modules. Lambdas are deliberately absent: context values
follow the JSON data model (dict, list, str, int, float, bool, None), and the engine never
reads attributes of, nor calls, Python objects, so a template can only reach what the
caller put into the context. Anything outside that model renders as empty text.

A source compiles once into a tree of nodes (``compile_template`` is LRU-cached by
source, partials included) and renders against a context stack. Indentation of
standalone partials, parents and blocks is applied lazily at render time: the current
indent is written before template content that starts an output line, never inside
interpolated data.

Exceptions::

    Exception
    ├── TemplateError   the source does not parse; carries line and column
    └── RenderError     a render-time limit was hit (partial depth, output size)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeAlias

__all__ = [
    "Partials",
    "RenderError",
    "Template",
    "TemplateError",
    "compile_template",
    "referenced_partials",
    "render",
]

Partials: TypeAlias = Mapping[str, str] | Callable[[str], str | None] | None
"""Partial sources by name: a mapping, or a lookup returning None when missing."""

DEFAULT_MAX_PARTIAL_DEPTH: Final = 32
DEFAULT_MAX_OUTPUT: Final = 4 * 1024 * 1024
_MAX_NESTING: Final = 100  # sections/blocks nested in one source; keeps the stack shallow


class TemplateError(Exception):
    """The source does not parse; ``line`` and ``column`` (1-based) point at the culprit tag.

    Raised by ``compile_template`` (and by ``render`` when a partial fails to compile),
    never for missing data or missing partials, which render as empty text per the spec.
    """

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} at line {line}, column {column}")
        self.message = message
        self.line = line
        self.column = column

    def __reduce__(self) -> tuple[type[TemplateError], tuple[str, int, int]]:
        return (type(self), (self.message, self.line, self.column))


class RenderError(Exception):
    """Rendering hit a safety limit: partials nested too deeply or output too large.

    These guard against hostile or runaway templates (self-including partials, sections
    multiplying large values); a well-formed page never sees them.
    """


# --------------------------------------------------------------------------- values

_MISSING: Final = object()
_Keys: TypeAlias = tuple[tuple[str, int | None], ...]


def _parse_keys(name: str) -> _Keys:
    """Split a dotted name; ``()`` is the implicit iterator ``.``; digits also index lists."""
    if name == ".":
        return ()
    return tuple((p, int(p) if p.isascii() and p.isdigit() else None) for p in name.split("."))


def _child(value: object, key: str, index: int | None) -> object:
    """One step of a dotted name: dict key or list index only, never an attribute."""
    if isinstance(value, dict):
        return value.get(key, _MISSING)
    if index is not None and isinstance(value, (list, tuple)) and index < len(value):
        return value[index]
    return _MISSING


def _resolve(stack: list[object], keys: _Keys) -> object:
    """Find the first frame (innermost first) holding the first key, then walk the rest.

    Per the spec, a later key missing yields None: the search never backtracks to outer frames.
    """
    if not keys:
        return stack[-1]
    key, index = keys[0]
    for frame in reversed(stack):
        if type(frame) is dict:
            if key in frame:
                value = frame[key]
                break
            continue
        value = _child(frame, key, index)
        if value is not _MISSING:
            break
    else:
        return None
    for key, index in keys[1:]:
        value = _child(value, key, index)
        if value is _MISSING:
            return None
    return value


def _to_text(value: object) -> str:
    """JSON-style text: None -> '', booleans -> true/false, whole floats without '.0'."""
    if isinstance(value, str):
        return str.__str__(value)
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if float.is_integer(value) and abs(value) < 1e21:
            return int.__repr__(float.__int__(value))  # 1.0 -> "1", as JavaScript prints it
        return float.__repr__(value)
    return ""  # containers and foreign objects: nothing, rather than a repr leak


def _truthy(value: object) -> bool:
    """JavaScript-like falsiness for JSON values: None, false, 0, NaN, '' and [] (dicts count)."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, tuple)):
        return len(value) > 0
    if isinstance(value, (int, float)):
        return value != 0 and value == value
    return True


def _escape(text: str) -> str:
    """HTML-escape for both element text and quoted attribute values."""
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


# --------------------------------------------------------------------------- rendering


class _Renderer:
    """Mutable state of one render call: output, limits, indentation, partial memo."""

    __slots__ = (
        "blocks",
        "bol",
        "depth",
        "indent",
        "loaded",
        "max_depth",
        "max_output",
        "out",
        "partials",
        "size",
    )

    def __init__(self, partials: Partials, max_depth: int, max_output: int) -> None:
        self.out: list[str] = []
        self.size = 0
        self.max_output = max_output
        self.indent = ""  # written before template content that starts an output line
        self.bol = True  # only tracked while indent is non-empty
        self.depth = 0
        self.max_depth = max_depth
        self.partials = partials
        self.loaded: dict[str, Template | None] = {}
        self.blocks: dict[str, _Block] = {}  # block overrides in effect, outermost wins

    def write(self, text: str) -> None:
        self.out.append(text)
        self.size += len(text)
        if self.size > self.max_output:
            self.overflow()

    def overflow(self) -> None:
        raise RenderError(f"output larger than {self.max_output} characters")

    def write_template(self, text: str) -> None:
        """Write template text, indenting each line it starts."""
        indent = self.indent
        if not indent:
            self.write(text)
            return
        if self.bol:
            self.write(indent)
        if text.endswith("\n"):
            self.write(text[:-1].replace("\n", "\n" + indent) + "\n")
            self.bol = True
        else:
            self.write(text.replace("\n", "\n" + indent))
            self.bol = False

    def load(self, name: str) -> Template | None:
        try:
            return self.loaded[name]
        except KeyError:
            pass
        partials = self.partials
        if partials is None:
            source = None
        elif isinstance(partials, Mapping):
            source = partials.get(name)
        else:
            source = partials(name)
        if source is not None and not isinstance(source, str):
            raise TypeError(f"partial {name!r} must be a str, not {type(source).__name__}")
        template = None if source is None else compile_template(source)
        self.loaded[name] = template
        return template

    def enter(self, name: str) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise RenderError(f"partials nested deeper than {self.max_depth} (at {name!r})")


class _Node:
    __slots__ = ()

    def render(self, r: _Renderer, stack: list[object]) -> None:
        raise NotImplementedError


class _Text(_Node):
    __slots__ = ("starts_line", "text")

    def __init__(self, text: str, starts_line: bool) -> None:
        self.text = text
        self.starts_line = starts_line  # the source line starts here (used by dedent)

    def render(self, r: _Renderer, stack: list[object]) -> None:
        if r.indent:
            r.write_template(self.text)
            return
        r.out.append(self.text)
        r.size += len(self.text)
        if r.size > r.max_output:
            r.overflow()


class _Var(_Node):
    __slots__ = ("escape", "keys")

    def __init__(self, name: str, escape: bool) -> None:
        self.keys = _parse_keys(name)
        self.escape = escape

    def render(self, r: _Renderer, stack: list[object]) -> None:
        value = _resolve(stack, self.keys)
        text = value if type(value) is str else _to_text(value)
        if self.escape and text:
            text = _escape(text)
        if r.indent and r.bol:
            r.write(r.indent)
            r.bol = False
        r.out.append(text)
        r.size += len(text)
        if r.size > r.max_output:
            r.overflow()


class _Section(_Node):
    __slots__ = ("body", "inverted", "keys")

    def __init__(self, name: str, inverted: bool, body: tuple[_Node, ...]) -> None:
        self.keys = _parse_keys(name)
        self.inverted = inverted
        self.body = body

    def render(self, r: _Renderer, stack: list[object]) -> None:
        value = _resolve(stack, self.keys)
        if self.inverted:
            if not _truthy(value):
                for node in self.body:
                    node.render(r, stack)
            return
        if isinstance(value, (list, tuple)):
            for item in value:
                stack.append(item)
                for node in self.body:
                    node.render(r, stack)
                stack.pop()
        elif _truthy(value):
            stack.append(value)
            for node in self.body:
                node.render(r, stack)
            stack.pop()


def _name_of(stack: list[object], static: str, dynamic: _Keys | None) -> str | None:
    """A partial's name: static, or looked up once in the context for ``*name``."""
    if dynamic is None:
        return static
    value = _resolve(stack, dynamic)
    return value if isinstance(value, str) and value else None


class _Partial(_Node):
    __slots__ = ("dynamic", "indent", "name")

    def __init__(self, name: str, indent: str | None) -> None:
        self.name = name
        self.dynamic = _parse_keys(name[1:]) if name.startswith("*") else None
        self.indent = indent  # None unless standalone

    def render(self, r: _Renderer, stack: list[object]) -> None:
        name = _name_of(stack, self.name, self.dynamic)
        if name is None:
            return
        template = r.load(name)
        if template is None:
            return
        r.enter(name)
        saved = r.indent
        if self.indent is not None:
            r.indent = saved + self.indent
            r.bol = True
        for node in template.nodes:
            node.render(r, stack)
        r.indent = saved
        r.depth -= 1


class _Parent(_Partial):
    __slots__ = ("blocks",)

    def __init__(self, name: str, indent: str | None, blocks: dict[str, _Block]) -> None:
        super().__init__(name, indent)
        self.blocks = blocks  # this tag's arguments

    def render(self, r: _Renderer, stack: list[object]) -> None:
        saved = r.blocks
        r.blocks = {**self.blocks, **saved} if saved else self.blocks
        super().render(r, stack)
        r.blocks = saved


class _Block(_Node):
    """A ``{{$name}}`` block: a parameter where it is expanded, an argument inside a parent.

    ``normalized`` blocks open with a standalone tag; their content was dedented at parse
    time by its intrinsic indentation. Overriding content is indented by ``expand_indent``
    (intrinsic indentation, or the tag's own, or the indentation of a standalone pair),
    default content by ``default_indent`` (what the dedent removed).
    """

    __slots__ = ("body", "default_indent", "expand_indent", "name", "normalized")

    def __init__(self, name: str, body: tuple[_Node, ...], normalized: bool) -> None:
        self.name = name
        self.body = body
        self.normalized = normalized
        self.default_indent = ""
        self.expand_indent = ""

    def render(self, r: _Renderer, stack: list[object]) -> None:
        override = r.blocks.get(self.name)
        if override is None:
            body, extra = self.body, self.default_indent
        else:
            body, extra = override.body, self.expand_indent
        saved = r.indent
        if extra:
            r.indent = saved + extra
        if self.normalized:
            r.bol = True
        elif extra:
            r.bol = False  # a standalone pair: the tag's indentation is already written
        for node in body:
            node.render(r, stack)
        r.indent = saved


# --------------------------------------------------------------------------- parsing

_OPENERS: Final = frozenset("#^<$")
_STANDALONE_KINDS: Final = frozenset("#^/!=>$")
_KIND_WORDS: Final = {"#": "section", "^": "inverted section", "<": "parent", "$": "block"}
_RIGHT_CLEAR: Final = re.compile(r"[ \t]*(?:\r?\n|\Z)")
_LEADING_WS: Final = re.compile(r"[ \t]*")


class _Tok:
    """A lexed piece: ``text`` or a tag kind (var raw # ^ / ! = > < $) with layout facts."""

    __slots__ = (
        "container",
        "end",
        "kind",
        "left",
        "left_ws",
        "name",
        "pair",
        "partner",
        "right_end",
        "standalone",
        "start",
    )

    def __init__(self, kind: str, name: str, start: int, end: int) -> None:
        self.kind = kind
        self.name = name
        self.start = start
        self.end = end
        self.container = -1  # index of the innermost enclosing opener
        self.partner = -1  # opener <-> closer
        self.left = False  # only blanks between line start and tag
        self.left_ws = ""
        self.right_end = -1  # end of the trailing blanks + newline, if clear to the right
        self.standalone = False
        self.pair = False  # opener whose pair sits alone on its line(s)


def _error(source: str, offset: int, message: str) -> TemplateError:
    line_start = source.rfind("\n", 0, offset) + 1
    return TemplateError(message, source.count("\n", 0, offset) + 1, offset - line_start + 1)


def _check_name(source: str, tok: _Tok) -> None:
    name = tok.name
    if tok.kind in (">", "<", "/") and name.startswith("*"):
        name = tok.name = "*" + name[1:].lstrip()
    if not name:
        raise _error(source, tok.start, "empty tag name")
    if any(c.isspace() for c in name):
        raise _error(source, tok.start, f"invalid tag name {name!r}")
    dotted = name[1:] if tok.kind in (">", "<") and name.startswith("*") else name
    checked = tok.kind in ("var", "raw", "#", "^") or dotted != name
    if checked and dotted != "." and not all(dotted.split(".")):
        raise _error(source, tok.start, f"invalid dotted name {name!r}")


def _tokenize(source: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    otag, ctag = "{{", "}}"
    pos, size = 0, len(source)
    while pos < size:
        start = source.find(otag, pos)
        if start < 0:
            tokens.append(_Tok("text", "", pos, size))
            break
        if start > pos:
            tokens.append(_Tok("text", "", pos, start))
        inner = start + len(otag)
        sigil = source[inner : inner + 1]
        close, body = ctag, inner
        if sigil in ("{", "="):
            close, body = ("}" if sigil == "{" else "=") + ctag, inner + 1
        stop = source.find(close, body)
        if stop < 0:
            what = "invalid set-delimiter tag" if sigil == "=" else "unclosed tag"
            raise _error(source, start, what)
        content = source[body:stop]
        pos = stop + len(close)
        if sigil == "=":
            delims = content.split()
            if len(delims) != 2 or "=" in content.strip():
                raise _error(source, start, f"invalid set-delimiter tag {content.strip()!r}")
            otag, ctag = delims
            tokens.append(_Tok("=", "", start, pos))
            continue
        if sigil == "{":
            tok = _Tok("raw", content.strip(), start, pos)
        else:
            stripped = content.strip()
            kind = stripped[:1]
            if kind and kind in "#^/><$&!":
                tok = _Tok("raw" if kind == "&" else kind, stripped[1:].strip(), start, pos)
            else:
                tok = _Tok("var", stripped, start, pos)
        if tok.kind != "!":
            _check_name(source, tok)
        tokens.append(tok)
    return tokens


def _pair_up(source: str, tokens: list[_Tok]) -> None:
    """Match openers with closers; record each tag's enclosing opener."""
    open_: list[int] = []
    for i, tok in enumerate(tokens):
        if tok.kind == "text":
            continue
        tok.container = open_[-1] if open_ else -1
        if tok.kind in _OPENERS:
            open_.append(i)
            if len(open_) > _MAX_NESTING:
                raise _error(source, tok.start, f"sections nested deeper than {_MAX_NESTING}")
        elif tok.kind == "/":
            if not open_:
                raise _error(source, tok.start, f"unexpected closing tag {tok.name!r}")
            j = open_.pop()
            opener = tokens[j]
            if opener.name != tok.name:
                where = _error(source, opener.start, "")
                raise _error(
                    source,
                    tok.start,
                    f"closing tag {tok.name!r} does not match {_KIND_WORDS[opener.kind]} "
                    f"{opener.name!r} (opened at line {where.line}, column {where.column})",
                )
            opener.partner, tok.partner = i, j
            tok.container = opener.container
    if open_:
        opener = tokens[open_[-1]]
        raise _error(source, opener.start, f"unclosed {_KIND_WORDS[opener.kind]} {opener.name!r}")


def _mark_standalone(source: str, tokens: list[_Tok]) -> None:
    """Apply the spec's standalone-line rules by trimming the neighbouring text tokens.

    A tag alone on its line (only blanks around it) loses the whole line. Inheritance adds
    pair rules: a parent pair is standalone when its opener is clear to the left and its
    closer clear to the right; inside a parent, only what follows a block opener matters
    (the rest of the parent's body is ignored text).
    """
    for tok in tokens:
        if tok.kind in ("text", "var", "raw"):
            continue
        line_start = source.rfind("\n", 0, tok.start) + 1
        tok.left_ws = source[line_start : tok.start]
        tok.left = not tok.left_ws.strip(" \t")
        match = _RIGHT_CLEAR.match(source, tok.end)
        tok.right_end = match.end() if match else -1

    def trim_left(i: int) -> None:
        if tokens[i].left_ws:
            tokens[i - 1].end = tokens[i].start - len(tokens[i].left_ws)

    def trim_right(i: int) -> None:
        if i + 1 < len(tokens) and tokens[i + 1].kind == "text":
            tokens[i + 1].start = tokens[i].right_end

    def in_parent(tok: _Tok) -> bool:
        return tok.container >= 0 and tokens[tok.container].kind == "<"

    for i, tok in enumerate(tokens):
        kind = tok.kind
        if kind == "<":
            if tok.left and tokens[tok.partner].right_end >= 0:
                tok.pair = True
                trim_left(i)
                trim_right(tok.partner)
        elif kind == "$" and in_parent(tok):
            if tok.right_end >= 0:
                tok.standalone = True
                trim_right(i)
        elif kind == "/" and tokens[tok.partner].kind == "<":
            pass
        elif kind == "/" and tokens[tok.partner].kind == "$" and in_parent(tok):
            if tok.left:
                trim_left(i)
        elif kind in _STANDALONE_KINDS:
            if tok.left and tok.right_end >= 0:
                tok.standalone = True
                trim_left(i)
                trim_right(i)
            if kind == "$":
                tok.pair = tok.left and tokens[tok.partner].right_end >= 0


def _outdent(line: str, prefix: str) -> str:
    """Remove as much of ``prefix`` as ``line`` starts with."""
    n = 0
    limit = min(len(line), len(prefix))
    while n < limit and line[n] == prefix[n]:
        n += 1
    return line[n:]


def _dedent(nodes: tuple[_Node, ...], prefix: str) -> tuple[_Node, ...]:
    """Strip ``prefix`` from every source line start in ``nodes`` (block reindentation)."""
    out: list[_Node] = []
    for node in nodes:
        if isinstance(node, _Text):
            lines = node.text.split("\n")
            for k in range(0 if node.starts_line else 1, len(lines)):
                lines[k] = _outdent(lines[k], prefix)
            text = "\n".join(lines)
            if text:
                out.append(_Text(text, node.starts_line))
            continue
        if isinstance(node, _Section):
            node.body = _dedent(node.body, prefix)
        elif isinstance(node, _Partial):
            if node.indent is not None:
                node.indent = _outdent(node.indent, prefix)
            if isinstance(node, _Parent):
                for block in node.blocks.values():
                    if not block.normalized:
                        block.body = _dedent(block.body, prefix)
        elif isinstance(node, _Block):
            node.default_indent = _outdent(node.default_indent, prefix)
            node.expand_indent = _outdent(node.expand_indent, prefix)
            if not node.normalized:
                node.body = _dedent(node.body, prefix)
        out.append(node)
    return tuple(out)


def _merge(nodes: list[_Node]) -> tuple[_Node, ...]:
    """Join adjacent text nodes (left apart by comments and trimmed lines)."""
    out: list[_Node] = []
    for node in nodes:
        last = out[-1] if out else None
        if (
            isinstance(node, _Text)
            and isinstance(last, _Text)
            and (node.starts_line or not last.text.endswith("\n"))
        ):
            out[-1] = _Text(last.text + node.text, last.starts_line)
        else:
            out.append(node)
    return tuple(out)


def _make_block(source: str, opener: _Tok, closer: _Tok, body: tuple[_Node, ...]) -> _Block:
    block = _Block(opener.name, body, opener.standalone)
    if opener.standalone:
        intrinsic = ""
        if body:  # indentation of the content's first line, per "Intrinsic indentation"
            match = _LEADING_WS.match(source, opener.right_end, closer.start)
            intrinsic = match.group() if match else ""
            block.body = _dedent(body, intrinsic)
        block.default_indent = intrinsic
        block.expand_indent = intrinsic if body else opener.left_ws
    elif opener.pair:
        block.expand_indent = opener.left_ws
    return block


def _build(source: str, tokens: list[_Tok]) -> tuple[_Node, ...]:
    root: list[_Node] = []
    children = root
    stack: list[tuple[_Tok, list[_Node]]] = []
    for tok in tokens:
        kind = tok.kind
        if kind == "text":
            if tok.end > tok.start:
                starts_line = tok.start == 0 or source[tok.start - 1] == "\n"
                children.append(_Text(source[tok.start : tok.end], starts_line))
        elif kind in ("var", "raw"):
            children.append(_Var(tok.name, escape=kind == "var"))
        elif kind == ">":
            children.append(_Partial(tok.name, tok.left_ws if tok.standalone else None))
        elif kind in _OPENERS:
            stack.append((tok, children))
            children = []
        elif kind == "/":
            opener, outer = stack.pop()
            body = _merge(children)
            node: _Node
            if opener.kind == "<":
                blocks = {b.name: b for b in body if isinstance(b, _Block)}
                node = _Parent(opener.name, opener.left_ws if opener.pair else None, blocks)
            elif opener.kind == "$":
                node = _make_block(source, opener, tok, body)
            else:
                node = _Section(opener.name, opener.kind == "^", body)
            outer.append(node)
            children = outer
    return _merge(root)


def _walk(nodes: tuple[_Node, ...]) -> Iterator[_Node]:
    for node in nodes:
        yield node
        if isinstance(node, (_Section, _Block)):
            yield from _walk(node.body)
        elif isinstance(node, _Parent):
            for block in node.blocks.values():
                yield from _walk((block,))


# --------------------------------------------------------------------------- public API


class Template:
    """A compiled template; immutable and safe to share between threads and renders."""

    __slots__ = ("nodes", "partial_names", "source")

    def __init__(self, source: str, nodes: tuple[_Node, ...]) -> None:
        self.source = source
        self.nodes = nodes
        self.partial_names = frozenset(
            n.name for n in _walk(nodes) if isinstance(n, _Partial) and n.dynamic is None
        )

    def __repr__(self) -> str:
        head = self.source[:40] + ("..." if len(self.source) > 40 else "")
        return f"<Template {head!r}>"

    def render(
        self,
        context: Any,
        partials: Partials = None,
        *,
        max_partial_depth: int = DEFAULT_MAX_PARTIAL_DEPTH,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> str:
        """Render against ``context``; missing names and partials render as empty text.

        ``max_partial_depth`` bounds nested partial/parent expansion and ``max_output``
        the result length in characters; exceeding either raises RenderError.
        """
        r = _Renderer(partials, max_partial_depth, max_output)
        stack = [context]
        try:
            for node in self.nodes:
                node.render(r, stack)
        except RecursionError as exc:
            raise RenderError("template nesting too deep") from exc
        return "".join(r.out)


@functools.lru_cache(maxsize=512)
def compile_template(source: str) -> Template:
    """Parse ``source`` once; the same source returns the same Template object (LRU cache)."""
    if not isinstance(source, str):
        raise TypeError(f"template source must be a str, not {type(source).__name__}")
    tokens = _tokenize(source)
    _pair_up(source, tokens)
    _mark_standalone(source, tokens)
    return Template(source, _build(source, tokens))


def render(
    source: str,
    context: Any,
    partials: Partials = None,
    *,
    max_partial_depth: int = DEFAULT_MAX_PARTIAL_DEPTH,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> str:
    """Compile (cached) and render in one call; see ``Template.render``."""
    return compile_template(source).render(
        context, partials, max_partial_depth=max_partial_depth, max_output=max_output
    )


def referenced_partials(template: Template | str) -> set[str]:
    """Names of the partials and parents a template names statically, for cache invalidation.

    Dynamic names (``{{>*name}}``) depend on the data and cannot be known here; a template
    using them may load any partial. Partials of partials are not followed.
    """
    if isinstance(template, str):
        template = compile_template(template)
    return set(template.partial_names)
