"""Pages in the domain: what a valid page is, storage with audit rows, and rendering with its read set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import pytest

from wce.core import db, pages, pages_library, schema, sqlguard
from wce.core.errors import BadRequest, Conflict, Invalid, NotFound
from wce.core.pages_render import check_queries, render_page
from wce.core.permissions import Access


@pytest.fixture
def conn(tmp_path: Path) -> apsw.Connection:
    c = db.connect(str(tmp_path / "c.sqlite"), create=True)
    schema.migrate(c)
    c.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, owner INTEGER);"
        "CREATE TABLE secret(x); INSERT INTO secret VALUES ('s3cret');"
        "INSERT INTO notes(body, owner) VALUES ('first', 1), ('<b>second</b>', 2);"
        "CREATE VIEW v_notes AS SELECT body FROM notes;"
        "INSERT INTO _wce_table_permissions(table_name, role, can_select) VALUES ('notes', 'anon', 1), ('notes', 'user', 1),"
        " ('v_notes', 'anon', 1);"
    )
    return c


@pytest.fixture
def guard(conn: apsw.Connection) -> sqlguard.Guard:
    return sqlguard.Guard(conn)


@pytest.fixture
def access(conn: apsw.Connection, guard: sqlguard.Guard) -> Access:
    return Access(conn, guard)


def spec(**over: Any) -> pages.PageSpec:
    return pages.parse_page({"path": "/p", "template": "x", **over})


def stored(conn: apsw.Connection, **over: Any) -> pages.Page:
    return pages.create_page(conn, spec(**over), actor="admin", ip="1.2.3.4")


# validation

@pytest.mark.parametrize("path", ["/", "/about", "/a/b-c.html", "/x_y/~z"])
def test_good_paths(path: str) -> None:
    assert pages.check_path(path) == path


@pytest.mark.parametrize("path", ["about", "/about/", "//x", "/a/../b", "/./a", "/a b", "/api", "/api/x", "/AUTH/login",
                                  "/fn/x", "/_/editor", "/" + "a" * 300, "/é"])
def test_bad_paths(path: str) -> None:
    with pytest.raises(Invalid):
        pages.check_path(path)


def test_page_body_checks() -> None:
    with pytest.raises(BadRequest):
        pages.parse_page({"template": "x"})
    with pytest.raises(BadRequest):
        pages.parse_page({"path": "/x", "template": 3})
    with pytest.raises(Invalid, match="line 1"):
        spec(template="{{#open}}")
    with pytest.raises(Invalid):
        spec(access="everyone")
    with pytest.raises(Invalid):
        spec(queries={"values": "SELECT 1"})
    with pytest.raises(Invalid):
        spec(queries={"bad name": "SELECT 1"})
    with pytest.raises(BadRequest):
        spec(queries={"q": 1})
    with pytest.raises(Invalid):
        spec(content_type="not a type")
    with pytest.raises(BadRequest):
        spec(context=42)
    assert spec(context="def context(ctx):\n    return {}").context == "def context(ctx):\n    return {}"
    s = spec(queries=None, content_type="text/plain; charset=utf-8")
    assert (s.queries, s.access, s.context, s.content_type) == ({}, "public", None, "text/plain; charset=utf-8")


def test_queries_are_checked_with_the_page_role(guard: sqlguard.Guard, access: Access) -> None:
    check_queries(guard, access, spec(queries={"n": "SELECT * FROM notes"}))
    check_queries(guard, access, spec(queries={"s": "SELECT * FROM secret"}, access="admin"))
    for sql in ("SELECT * FROM secret", "SELECT * FROM _wce_users", "DELETE FROM notes", "SELECT 1; SELECT 2",
                "SELECT * FROM nowhere", "PRAGMA table_info(notes)"):
        with pytest.raises(Invalid, match="query 'q'"):
            check_queries(guard, access, spec(queries={"q": sql}))
    with pytest.raises(Invalid, match="no read access to secret"):
        check_queries(guard, access, spec(queries={"q": "SELECT * FROM secret"}, access="user"))
    with pytest.raises(Invalid, match="_wce_users"):
        check_queries(guard, access, spec(queries={"q": "SELECT * FROM _wce_users"}, access="admin"))


# storage

def test_page_storage_and_audit(conn: apsw.Connection) -> None:
    p = stored(conn, queries={"n": "SELECT 1"})
    assert pages.get_page(conn, p.id) == p and p.queries == {"n": "SELECT 1"}
    with pytest.raises(Conflict):
        stored(conn)
    q = pages.replace_page(conn, p.id, spec(path="/q", template="y"), actor="admin", ip=None)
    assert (q.path, q.template, q.queries) == ("/q", "y", {})
    with pytest.raises(NotFound):
        pages.replace_page(conn, 999, spec(), actor="admin", ip=None)
    pages.delete_page(conn, p.id, actor="admin", ip=None)
    with pytest.raises(NotFound):
        pages.delete_page(conn, p.id, actor="admin", ip=None)
    audit = conn.execute("SELECT action, actor, target FROM _wce_audit_log ORDER BY id").fetchall()
    assert audit == [("page.create", "admin", str(p.id)), ("page.update", "admin", str(p.id)),
                     ("page.delete", "admin", str(p.id))]


def test_templates_and_values_storage(conn: apsw.Connection) -> None:
    t, created = pages_library.TEMPLATES.put(conn, "layout", {"source": "<main>{{$body}}{{/body}}</main>"}, actor="a", ip=None)
    assert created and t.key == "layout"
    _, created = pages_library.TEMPLATES.put(conn, "layout", {"source": "v2"}, actor="a", ip=None)
    assert not created and pages_library.TEMPLATES.all(conn) == {"layout": "v2"}
    with pytest.raises(Invalid):
        pages_library.TEMPLATES.put(conn, "bad/name", {"source": ""}, actor="a", ip=None)
    with pytest.raises(Invalid, match="line"):
        pages_library.TEMPLATES.put(conn, "broken", {"source": "{{/x}}"}, actor="a", ip=None)
    v, created = pages_library.VALUES.put(conn, "site", {"value": {"title": "Hi", "n": [1, 2]}}, actor="a", ip=None)
    assert created and v.content == {"title": "Hi", "n": [1, 2]}
    with pytest.raises(Invalid):
        pages_library.VALUES.put(conn, "a.b", {"value": 1}, actor="a", ip=None)
    with pytest.raises(BadRequest):
        pages_library.VALUES.put(conn, "k", {"other": 1}, actor="a", ip=None)
    pages_library.VALUES.delete(conn, "site", actor="a", ip=None)
    pages_library.TEMPLATES.delete(conn, "layout", actor="a", ip=None)
    with pytest.raises(NotFound):
        pages_library.VALUES.get(conn, "site")
    actions = [r[0] for r in conn.execute("SELECT action FROM _wce_audit_log ORDER BY id")]
    assert actions == ["template.put", "template.put", "value.put", "value.delete", "template.delete"]


# rendering

def test_render_context_and_dependencies(conn: apsw.Connection, guard: sqlguard.Guard, access: Access) -> None:
    page = stored(conn, template="{{> head}}{{values.site.title}}|{{#notes}}{{body}};{{/notes}}|{{page.path}}|{{> nope}}",
                  queries={"notes": "SELECT body FROM v_notes ORDER BY 1"})
    out = render_page(guard, access, page, {"head": "[{{values.lang}}]", "unused": "x"},
                      {"site": {"title": "T"}, "lang": "en", "other": 1})
    assert out.error is None and out.body is not None
    assert out.body.decode() == "[en]T|&lt;b&gt;second&lt;/b&gt;;first;|/p|"
    assert out.read_tables == {"notes", "v_notes"}  # through the view, and the view itself
    assert out.partials == {"head", "nope"}  # a missing partial counts: creating it must re-render
    assert out.value_keys == {"site", "lang"}
    assert out.etag and out.etag.startswith('"')


def test_public_page_reads_with_anon_grants_only(conn: apsw.Connection, guard: sqlguard.Guard, access: Access) -> None:
    page = stored(conn, template="{{#s}}{{x}}{{/s}}", queries={"s": "SELECT x FROM secret"}, access="admin")
    assert render_page(guard, access, page, {}, {}).body == b"s3cret"
    public = pages.Page(page.id, page.path, page.template, page.queries, None, "public", "text/html", 0.0)
    out = render_page(guard, access, public, {}, {})
    assert out.body is None and out.denied and "secret" in (out.error or "")


def test_row_policy_tables_are_not_readable_by_shared_renders(conn: apsw.Connection, guard: sqlguard.Guard,
                                                              access: Access) -> None:
    conn.execute("INSERT INTO _wce_row_policies(table_name, role, action, using_expr) VALUES ('notes', 'user', 'select', 'owner = :user_id')")
    page = stored(conn, template="{{#n}}{{body}}{{/n}}", queries={"n": "SELECT body FROM notes"}, access="user")
    out = render_page(guard, access, page, {}, {})
    assert out.body is None and out.denied


def test_render_failures_are_reported_not_raised(conn: apsw.Connection, guard: sqlguard.Guard, access: Access) -> None:
    page = stored(conn, template="{{> deep}}", queries={"bad": "SELECT json(body) FROM notes"})
    out = render_page(guard, access, page, {}, {})
    assert out.body is None and not out.denied and "query 'bad'" in (out.error or "")
    assert out.read_tables == {"notes"}  # kept, so the commit that fixes the data retries
    ok = stored(conn, path="/ok", template="{{> deep}}")
    out = render_page(guard, access, ok, {"deep": "{{> deep}}"}, {})
    assert out.body is None and "partials nested deeper" in (out.error or "")


def test_etag_follows_body_and_content_type(conn: apsw.Connection, guard: sqlguard.Guard, access: Access) -> None:
    a = stored(conn, template="same")
    b = stored(conn, path="/b", template="same", content_type="text/plain")
    ea, eb = (render_page(guard, access, p, {}, {}).etag for p in (a, b))
    assert ea != eb and render_page(guard, access, a, {}, {}).etag == ea


def test_read_sets_are_cached_per_query_text(conn: apsw.Connection, guard: sqlguard.Guard, access: Access) -> None:
    page = stored(conn, template="", queries={"n": "SELECT count(*) FROM notes"})
    cache: dict[str, frozenset[str]] = {}
    render_page(guard, access, page, {}, {}, cache)
    assert cache == {"SELECT count(*) FROM notes": frozenset({"notes"})}


def test_a_revoked_grant_is_enforced_on_the_next_render(conn: apsw.Connection, guard: sqlguard.Guard,
                                                        access: Access) -> None:
    """The authorizer only runs when a statement is prepared: a cached preparation must not outlive a grant."""
    page = stored(conn, template="{{#n}}{{body}}{{/n}}", queries={"n": "SELECT body FROM notes ORDER BY id"})
    read_sets: dict[str, frozenset[str]] = {}  # as the render cache does: no authorizer swap on later renders
    for _ in range(2):
        assert render_page(guard, access, page, {}, {}, read_sets).body == b"first&lt;b&gt;second&lt;/b&gt;"
    conn.execute("UPDATE _wce_table_permissions SET can_select = 0 WHERE table_name = 'notes' AND role = 'anon'")
    access.invalidate()
    out = render_page(guard, access, page, {}, {}, read_sets)
    assert out.body is None and out.denied


def test_an_endless_query_is_a_render_error(conn: apsw.Connection, guard: sqlguard.Guard, access: Access) -> None:
    page = stored(conn, template="{{#n}}{{c}}{{/n}}", access="admin", queries={
        "n": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS c FROM c"})
    out = render_page(guard, access, page, {}, {}, budget=0.2)
    assert out.body is None and "ran past 0.2 s" in (out.error or "")
    assert conn.execute("SELECT count(*) FROM notes").fetchall() == [(2,)]  # the connection is fine afterwards
