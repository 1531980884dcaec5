"""Render on write, in process: the bus tells the render cache what each commit changed, and only
the pages that depend on it are rendered again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest

from wce.core import db, pages, pages_library, schema, sqlguard
from wce.core.events import EventBus
from wce.core.permissions import Access
from wce.worker.render_cache import RenderCache


@dataclass
class World:
    conn: apsw.Connection
    bus: EventBus
    cache: RenderCache

    def page(self, **fields: Any) -> pages.Page:
        page = pages.create_page(self.conn, pages.parse_page({"path": "/p", "template": "", **fields}),
                                 actor="admin", ip=None)
        self.bus.flush()
        return page

    def body(self, page: pages.Page) -> bytes | None:
        p = self.cache.page_at(page.path)
        assert p is not None
        e = self.cache.entry(p)
        return e.body if e else None

    @property
    def renders(self) -> int:
        return self.cache.statistics().renders


def open_world(path: Path) -> World:
    conn = db.connect(str(path), create=True)
    schema.migrate(conn)
    guard = sqlguard.Guard(conn)
    access = Access(conn, guard)
    bus = EventBus(conn)
    cache = RenderCache(conn, guard, access)
    bus.subscribe(cache.on_change)
    cache.start()
    bus.flush()
    return World(conn, bus, cache)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    c = db.connect(str(tmp_path / "c.sqlite"), create=True)
    schema.migrate(c)
    c.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT); CREATE TABLE unrelated(x);"
        "INSERT INTO notes(body) VALUES ('one');"
        "INSERT INTO _wce_table_permissions(table_name, role, can_select) VALUES ('notes', 'anon', 1);"
    )
    c.close()
    w = open_world(tmp_path / "c.sqlite")
    yield w
    w.conn.close()


NOTES = {"template": "{{#notes}}{{body}};{{/notes}}", "queries": {"notes": "SELECT body FROM notes ORDER BY id"}}


def test_a_commit_to_a_read_table_updates_the_page(world: World) -> None:
    page = world.page(**NOTES)
    assert world.body(page) == b"one;"
    world.conn.execute("INSERT INTO notes(body) VALUES ('two')")
    assert world.body(page) == b"one;"  # not before the flush: hooks never render
    world.bus.flush()
    assert world.body(page) == b"one;two;"


def test_a_rollback_changes_nothing(world: World) -> None:
    page = world.page(**NOTES)
    before = world.renders
    with pytest.raises(RuntimeError):
        with db.transaction(world.conn):
            world.conn.execute("INSERT INTO notes(body) VALUES ('never')")
            raise RuntimeError
    world.bus.flush()
    assert world.renders == before and world.body(page) == b"one;"


def test_a_commit_to_an_unrelated_table_renders_nothing(world: World) -> None:
    world.page(**NOTES)
    world.page(path="/static", template="hello")
    before = world.renders
    world.conn.execute("INSERT INTO unrelated VALUES (1)")
    world.conn.execute("INSERT INTO _wce_audit_log(ts, action) VALUES (0, 'x')")
    world.bus.flush()
    assert world.renders == before


def test_template_change_rerenders_its_dependents_only(world: World) -> None:
    uses = world.page(path="/uses", template="[{{> nav}}]")
    other = world.page(path="/other", template="{{> footer}}")
    assert world.body(uses) == b"[]"  # the partial does not exist yet
    before = world.renders
    pages_library.TEMPLATES.put(world.conn, "nav", {"source": "home"}, actor="a", ip=None)
    world.bus.flush()
    assert world.body(uses) == b"[home]" and world.renders == before + 1
    pages_library.TEMPLATES.put(world.conn, "nav", {"source": "home | about"}, actor="a", ip=None)
    world.bus.flush()
    assert world.body(uses) == b"[home | about]" and world.body(other) == b""
    assert world.renders == before + 2


def test_value_change_rerenders_the_pages_that_read_that_key(world: World) -> None:
    title = world.page(path="/t", template="{{values.title}}")
    world.page(path="/n", template="{{values.name}}")
    before = world.renders
    pages_library.VALUES.put(world.conn, "title", {"value": "Hello"}, actor="a", ip=None)
    world.bus.flush()
    assert world.body(title) == b"Hello" and world.renders == before + 1


def test_a_failing_render_keeps_the_last_good_output(world: World) -> None:
    page = world.page(template="{{#j}}{{v}}{{/j}}", queries={"j": "SELECT json(body) AS v FROM notes"})
    world.conn.execute("UPDATE notes SET body = '[1]'")
    world.bus.flush()
    assert world.body(page) == b"[1]"
    world.conn.execute("UPDATE notes SET body = 'not json'")
    world.bus.flush()
    assert world.body(page) == b"[1]"
    status = world.cache.status(page.id)
    assert "malformed JSON" in status["render_error"] and status["render_error_at"]
    world.conn.execute("UPDATE notes SET body = '[2]'")  # the read set survived the failure
    world.bus.flush()
    assert world.body(page) == b"[2]" and world.cache.status(page.id)["render_error"] is None


def test_a_revoked_grant_withdraws_the_output(world: World) -> None:
    page = world.page(**NOTES)
    world.conn.execute("DELETE FROM _wce_table_permissions WHERE table_name = 'notes'")
    world.bus.flush()
    assert world.body(page) is None and "notes" in world.cache.status(page.id)["render_error"]


def test_output_is_only_served_to_the_access_it_was_rendered_for(world: World) -> None:
    world.conn.execute("CREATE TABLE private(x); INSERT INTO private VALUES ('hidden')")
    page = world.page(access="admin", template="{{#p}}{{x}}{{/p}}", queries={"p": "SELECT x FROM private"})
    assert world.body(page) == b"hidden"
    # made public behind the checks' back (the API refuses this query for a public page):
    world.conn.execute("UPDATE _wce_pages SET access = 'public' WHERE id = ?", (page.id,))
    world.bus.flush()
    assert world.body(page) is None


def test_deleting_a_page_removes_its_output(world: World) -> None:
    page = world.page(**NOTES)
    pages.delete_page(world.conn, page.id, actor="a", ip=None)
    world.bus.flush()
    assert world.cache.page_at("/p") is None and page.id not in world.cache.entries
    assert world.conn.execute("SELECT count(*) FROM _wce_render_cache").fetchall() == [(0,)]


def test_schema_change_rerenders_everything(world: World) -> None:
    page = world.page(template="{{#t}}{{a}}{{/t}}", queries={"t": "SELECT 1 AS a"}, access="admin")
    before = world.renders
    world.conn.execute("CREATE TABLE later(a)")
    world.bus.flush()
    assert world.renders == before + 1 and world.body(page) == b"1"


def test_a_commit_renders_only_the_pages_it_touches(world: World) -> None:
    page = world.page(**NOTES)
    first = world.cache.entries[page.id]
    world.conn.execute("INSERT INTO notes(body) VALUES ('two')")
    world.bus.flush()
    second = world.cache.entries[page.id]
    renders = world.renders
    world.conn.execute("INSERT INTO unrelated VALUES (1)")
    world.bus.flush()
    assert world.renders == renders and world.cache.entries[page.id] is second
    assert [first.body, second.body] == [b"one;", b"one;two;"]
    assert second.path == "/p" and second.access == "public" and second.content_type == "text/html; charset=utf-8"


def test_a_clean_restart_serves_the_stored_output_without_rendering(tmp_path: Path, world: World) -> None:
    page = world.page(**NOTES)
    world.cache.mark_clean()
    path = world.conn.filename
    world.conn.close()
    again = open_world(Path(path))
    assert again.renders == 0 and again.body(page) == b"one;"
    # ... and it stays live
    again.conn.execute("INSERT INTO notes(body) VALUES ('two')")
    again.bus.flush()
    assert again.body(page) == b"one;two;"
    again.conn.close()


def test_after_a_crash_every_page_is_rendered_again_when_first_asked_for(tmp_path: Path, world: World) -> None:
    page = world.page(**NOTES)
    path = world.conn.filename
    world.conn.close()  # no mark_clean: as if the worker had been killed
    other = apsw.Connection(path)  # a commit the cache never saw
    other.execute("INSERT INTO notes(body) VALUES ('missed')")
    other.close()
    again = open_world(Path(path))
    # nothing rendered at start (no tenant code before the worker's caps and a request's budget) ...
    assert again.renders == 0
    p = again.cache.page_at(page.path)
    assert p is not None and again.cache.current(p) is None  # ... and the stale output is not pushed
    # ... the first request for the page renders it
    assert again.body(page) == b"one;missed;" and again.renders == 1
    assert again.body(page) == b"one;missed;" and again.renders == 1
    assert again.cache.current(p) is not None
    again.conn.close()


def test_pages_still_stale_at_a_clean_stop_stay_stale(tmp_path: Path, world: World) -> None:
    first = world.page(**NOTES)
    second = pages.create_page(world.conn, pages.parse_page({"path": "/q", **NOTES}), actor="admin", ip=None)
    world.bus.flush()
    path = Path(world.conn.filename)
    world.conn.close()  # a crash: both pages are stale at the next start
    again = open_world(path)
    assert again.body(first) == b"one;" and again.renders == 1
    again.cache.mark_clean()  # a clean stop with /q never asked for
    again.conn.close()
    third = open_world(path)
    q = third.cache.page_at(second.path)
    p = third.cache.page_at(first.path)
    assert q is not None and p is not None
    assert third.cache.current(q) is None and third.cache.current(p) is not None
    assert third.body(second) == b"one;" and third.renders == 1
    third.conn.close()
