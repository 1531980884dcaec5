"""`GET rows` cursors and integer query parameters: whatever a client sends is a page or a 400.

Property tests (hypothesis): a cursor is client-controlled base64 JSON, so every JSON value, and
every string that is not one, must end as rows or BadRequest, never as another exception (a 500).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wce.core import db, rows, sqlguard, tables
from wce.core.errors import BadRequest, NotFound
from wce.core.permissions import Access, Actor


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[rows.Rows, tables.Table]]:
    conn = db.connect(str(tmp_path_factory.mktemp("cursor") / "c.db"), create=True)
    guard = sqlguard.Guard(conn)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, score REAL, data BLOB)")
    tables.add_fts(conn, tables.Catalog(conn).get("notes"), ["title"])
    for i in range(12):
        conn.execute("INSERT INTO notes(title, score, data) VALUES (?, ?, ?)",
                     (f"hello {i}", None if i % 4 == 0 else i / 3, bytes([i])))
    table = tables.Catalog(conn).get("notes")
    yield rows.Rows(conn, guard, Access(conn, guard), Actor(1, "admin", "admin")), table
    conn.close()


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


SHAPES = [(), (("order", "title"),), (("order", "-score"),), (("order", "data"),), (("order", "-id"),),
          (("search", "hello"),)]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


def page_or_400(pair: tuple[rows.Rows, tables.Table], after: str, shape: tuple[tuple[str, str], ...]) -> None:
    r, table = pair
    try:
        q = rows.parse_query(table, [*shape, ("limit", "3"), ("after", after)])
        got, nxt = r.list(table, q)
    except BadRequest:
        return
    assert len(got) <= 3
    assert nxt is None or isinstance(nxt, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, shape=st.sampled_from(SHAPES))
def test_any_json_cursor_is_a_page_or_400(notes: tuple[rows.Rows, tables.Table], value: Any,
                                          shape: tuple[tuple[str, str], ...]) -> None:
    page_or_400(notes, cursor(value), shape)
    page_or_400(notes, cursor([value, value]), shape)
    page_or_400(notes, cursor({"o": value}), shape)
    page_or_400(notes, cursor([{"b": value}, 1]), shape)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40), shape=st.sampled_from(SHAPES))
def test_any_text_cursor_is_a_page_or_400(notes: tuple[rows.Rows, tables.Table], text: str,
                                          shape: tuple[tuple[str, str], ...]) -> None:
    page_or_400(notes, text, shape)


@pytest.mark.parametrize("value,shape", [
    ({"a": 1}, ()),  # the review's two reproductions (L6)
    ([{"x": 1}, 1], (("order", "title"),)),
    ([None, 2**64], ()),
    ([2**70, 1], (("order", "score"),)),
    ([{"b": "not base64!"}, 1], (("order", "data"),)),
    ([{"b": 5}, 1], (("order", "data"),)),
    ({"o": 2**80}, (("search", "hello"),)),
    ({"o": True}, (("search", "hello"),)),
])
def test_crafted_cursors_are_400(notes: tuple[rows.Rows, tables.Table], value: Any,
                                 shape: tuple[tuple[str, str], ...]) -> None:
    r, table = notes
    with pytest.raises(BadRequest):
        r.list(table, rows.parse_query(table, [*shape, ("after", cursor(value))]))


@pytest.mark.parametrize("shape", SHAPES)
def test_cursors_handed_out_walk_every_row_once(notes: tuple[rows.Rows, tables.Table],
                                                shape: tuple[tuple[str, str], ...]) -> None:
    r, table = notes
    seen: list[int] = []
    after = None
    for _ in range(20):
        q = rows.parse_query(table, [*shape, ("limit", "5"), *([("after", after)] if after else [])])
        got, after = r.list(table, q)
        seen += [row["id"] for row in got]
        if after is None:
            break
    assert sorted(seen) == list(range(1, 13))


@given(st.integers() | st.text(max_size=30))
def test_integers_are_range_checked_in_one_place(raw: int | str) -> None:
    text = str(raw)
    try:
        value = rows.parse_int(text, NotFound("no"))
    except NotFound:
        return
    assert -(2**63) <= value < 2**63
    try:
        assert 1 <= rows.parse_int(text, BadRequest("limit"), lo=1, hi=500) <= 500
    except BadRequest:
        pass
