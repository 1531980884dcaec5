"""Mustache engine: the official spec suites from disk, plus our safety guarantees."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from wce.core.mustache import (
    RenderError,
    TemplateError,
    compile_template,
    referenced_partials,
    render,
)

SPEC_MODULES = (
    "comments",
    "delimiters",
    "interpolation",
    "inverted",
    "partials",
    "sections",
    "~inheritance",
    "~dynamic-names",
)  # ~lambdas is out of scope: contexts are JSON data, never code


def spec_dir() -> Path:
    """The spec suites copied into this repository (tests/core/mustache_spec), or $WCE_MUSTACHE_SPEC."""
    override = os.environ.get("WCE_MUSTACHE_SPEC")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "mustache_spec"


def spec_cases() -> list[Any]:
    """One param per spec case; a missing suite becomes a failing case, never a skip."""
    folder = spec_dir()
    cases: list[Any] = []
    for module in SPEC_MODULES:
        path = folder / f"{module}.json"
        if not path.is_file():
            problem = f"Mustache spec file missing: {path} (set WCE_MUSTACHE_SPEC to the folder)"
            cases.append(pytest.param(problem, id=f"{module}:MISSING"))
            continue
        seen: dict[str, int] = {}
        for case in json.loads(path.read_text(encoding="utf-8"))["tests"]:
            seen[case["name"]] = seen.get(case["name"], 0) + 1
            suffix = f" ({seen[case['name']]})" if seen[case["name"]] > 1 else ""
            cases.append(pytest.param(case, id=f"{module}:{case['name']}{suffix}"))
    return cases


@pytest.mark.parametrize("case", spec_cases())
def test_spec(case: dict[str, Any] | str) -> None:
    if isinstance(case, str):
        pytest.fail(case)
    result = render(case["template"], case["data"], case.get("partials", {}))
    assert result == case["expected"], case["desc"]


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    ("source", "message", "line", "column"),
    [
        ("a\nb {{#items}}\n{{name}}\n", "unclosed section 'items'", 2, 3),
        ("{{#a}}\n  {{/b}}", "closing tag 'b' does not match section 'a'", 2, 3),
        ("ok\n\n  x {{name\n", "unclosed tag", 3, 5),
        ("{{=<% %>}}", "invalid set-delimiter tag", 1, 1),
        ("x\n{{= a b c =}}", "invalid set-delimiter tag", 2, 1),
        ("{{=<% %>=}}\n<%# %>", "empty tag name", 2, 1),
        ("{{{raw}}", "unclosed tag", 1, 1),
        ("text {{/a}}", "unexpected closing tag 'a'", 1, 6),
        ("{{a b}}", "invalid tag name 'a b'", 1, 1),
        ("{{a..b}}", "invalid dotted name 'a..b'", 1, 1),
        ("{{<p}}{{$b}}{{/p}}", "closing tag 'p' does not match block 'b'", 1, 13),
    ],
)
def test_parse_error_position(source: str, message: str, line: int, column: int) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(source)
    error = info.value
    assert error.message.startswith(message)
    assert (error.line, error.column) == (line, column)
    assert str(error).endswith(f" at line {line}, column {column}")


def test_error_str_format() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template("one\ntwo\nab  {{#x}}")
    assert str(info.value) == "unclosed section 'x' at line 3, column 5"


# --------------------------------------------------------------------------- safety


def test_escapes_quotes_for_attributes() -> None:
    value = "\"x' <b>&"
    escaped = "&quot;x&#39; &lt;b&gt;&amp;"
    html = render("<a title='{{v}}' alt=\"{{v}}\">{{{v}}}", {"v": value})
    assert html == f"<a title='{escaped}' alt=\"{escaped}\">{value}"


def test_partial_recursion_limit() -> None:
    with pytest.raises(RenderError, match="nested deeper than 32"):
        render("{{>loop}}", {}, {"loop": "x{{>loop}}"})


def test_partial_depth_is_configurable() -> None:
    partials = {"a": "{{>b}}", "b": "{{<c}}{{/c}}", "c": "deep"}
    assert render("{{>a}}", {}, partials, max_partial_depth=3) == "deep"
    with pytest.raises(RenderError):
        render("{{>a}}", {}, partials, max_partial_depth=2)


def test_output_size_limit() -> None:
    source = "{{#rows}}{{text}}{{/rows}}"
    context = {"rows": [{"text": "x" * 10}] * 10}
    assert len(render(source, context, max_output=100)) == 100
    with pytest.raises(RenderError, match="output larger than 99"):
        render(source, context, max_output=99)


def test_output_limit_counts_template_text() -> None:
    with pytest.raises(RenderError):
        render("{{#n}}0123456789{{/n}}", {"n": list(range(20))}, max_output=150)


def test_compile_cache_returns_same_object() -> None:
    source = "Hello {{name}}! {{! cached }}"
    assert compile_template(source) is compile_template(source)
    assert compile_template(source) is not compile_template(source + " ")


def test_partials_compile_through_cache() -> None:
    compile_template.cache_clear()
    render("{{#rows}}{{>row}}{{/rows}}", {"rows": [1, 2, 3]}, {"row": "<{{.}}>"})
    assert compile_template.cache_info().currsize == 2


def test_no_attribute_access() -> None:
    touched: list[str] = []

    class Spy:
        name = "class attribute"

        def __getattr__(self, key: str) -> str:
            touched.append(key)
            return "leaked"

        @property
        def secret(self) -> str:
            touched.append("secret")
            return "leaked"

    context = {"obj": Spy()}
    source = "[{{obj.name}}|{{obj.secret}}|{{#obj}}{{name}}{{secret}}{{/obj}}|{{obj}}]"
    assert render(source, context) == "[|||]"
    assert touched == []


def test_callables_are_not_called() -> None:
    def lam() -> str:
        raise AssertionError("called")

    assert render("{{f}}{{#f}}x{{/f}}", {"f": lam}) == "x"


# --------------------------------------------------------------------------- behaviour


def test_value_formatting() -> None:
    context = {"t": True, "f": False, "n": None, "i": 42, "whole": 1.0, "frac": 1.21, "big": 1e21}
    assert render("{{t}} {{f}} [{{n}}] {{i}} {{whole}} {{frac}} {{big}}", context) == (
        "true false [] 42 1 1.21 1e+21"
    )


def test_javascript_like_truthiness() -> None:
    source = "{{#v}}yes{{/v}}{{^v}}no{{/v}}"
    falsy: tuple[object, ...] = (0, 0.0, "", [], None, False)
    truthy: tuple[object, ...] = (1, 0.5, "a", [0], {}, True)
    assert [render(source, {"v": v}) for v in falsy] == ["no"] * len(falsy)
    assert [render(source, {"v": v}) for v in truthy] == ["yes"] * len(truthy)


def test_list_index_in_dotted_name() -> None:
    rows = [{"name": "a"}, {"name": "b"}]
    assert render("{{rows.1.name}}|{{rows.5.name}}", {"rows": rows}) == "b|"


def test_partial_lookup_function() -> None:
    def lookup(name: str) -> str | None:
        return "<{{x}}>" if name == "known" else None

    assert render("{{>known}}{{>unknown}}", {"x": 1}, lookup) == "<1>"


def test_dynamic_parent() -> None:
    partials = {"layout": "[{{$body}}default{{/body}}]"}
    source = "{{<*layout_name}}{{$body}}page{{/body}}{{/*layout_name}}"
    assert render(source, {"layout_name": "layout"}, partials) == "[page]"


def test_layout_reindents_block_content() -> None:
    layout = "<body>\n  {{$content}}\n  default\n  {{/content}}\n</body>\n"
    page = (
        "{{<layout}}\n{{$content}}\n<ul>\n{{#items}}\n  <li>{{.}}</li>\n{{/items}}\n</ul>\n"
        "{{/content}}\n{{/layout}}\n"
    )
    expected = "<body>\n  <ul>\n    <li>a</li>\n    <li>b</li>\n  </ul>\n</body>\n"
    assert render(page, {"items": ["a", "b"]}, {"layout": layout}) == expected
    default = render("{{<layout}}{{/layout}}", {}, {"layout": layout})
    assert default == "<body>\n  default\n</body>\n"


def test_referenced_partials() -> None:
    source = "{{>a}}{{#s}}{{>b}}{{/s}}{{<p}}{{$x}}{{>c}}{{/x}}{{/p}}{{>*dyn}}{{$k}}{{>d}}{{/k}}"
    assert referenced_partials(source) == {"a", "b", "c", "d", "p"}
    assert referenced_partials(compile_template("no partials")) == set()
