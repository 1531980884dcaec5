"""What pages share: named Mustache templates (partials and layouts) and JSON values.

Templates are used as `{{> name}}` and `{{< name}}`; values reach every page as `values.KEY`, so
keys are identifiers (a dot would split the Mustache name). Every change writes its audit row in
the same transaction; the render cache learns of it from the commit's change set.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import apsw

from . import audit
from .db import transaction
from .errors import BadRequest, Invalid, NotFound
from .pages import MAX_TEMPLATE, check_template

MAX_VALUE = 256 * 1024
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_VALUE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class Template:
    """A stored template."""

    name: str
    source: str
    updated_at: float

    def public(self) -> dict[str, Any]:
        """The JSON shape."""
        return {"name": self.name, "source": self.source, "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True)
class Value:
    """A stored JSON value."""

    key: str
    value: Any
    updated_at: float

    def public(self) -> dict[str, Any]:
        """The JSON shape."""
        return {"key": self.key, "value": self.value, "updated_at": self.updated_at}


def check_template_name(name: str) -> str:
    """Letters, digits, `_ . -`; up to 64 characters."""
    if not _TEMPLATE_NAME.match(name):
        raise Invalid("a template name is 1-64 letters, digits, '_', '.' or '-'")
    return name


def check_value_key(key: str) -> str:
    """An identifier, so that `values.KEY` works in a template."""
    if not _VALUE_KEY.match(key):
        raise Invalid("a value key is an identifier: letters, digits and '_', not starting with a digit")
    return key


def all_templates(conn: apsw.Connection) -> dict[str, str]:
    """Every template's source by name."""
    return {str(name): str(source) for name, source in conn.execute("SELECT name, source FROM _wce_templates")}


def list_templates(conn: apsw.Connection) -> list[Template]:
    """Every template, by name."""
    return [Template(*r) for r in conn.execute("SELECT name, source, updated_at FROM _wce_templates ORDER BY name")]


def get_template(conn: apsw.Connection, name: str) -> Template:
    """One template, or NotFound."""
    row = conn.execute("SELECT name, source, updated_at FROM _wce_templates WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound("no such template")
    return Template(*row)


def put_template(conn: apsw.Connection, name: str, body: dict[str, Any], *, actor: str | None,
                 ip: str | None) -> tuple[Template, bool]:
    """Create or replace a template from `{"source": MUSTACHE}`; (template, created)."""
    check_template_name(name)
    source = body.get("source")
    if not isinstance(source, str):
        raise BadRequest("'source' must be a string")
    if len(source.encode()) > MAX_TEMPLATE:
        raise Invalid(f"a template is limited to {MAX_TEMPLATE} bytes")
    check_template(source, f"template {name}")
    with transaction(conn):
        created = conn.execute("SELECT 1 FROM _wce_templates WHERE name = ?", (name,)).fetchone() is None
        conn.execute("INSERT INTO _wce_templates(name, source, updated_at) VALUES (?, ?, ?)"
                     " ON CONFLICT(name) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at",
                     (name, source, time.time()))
        audit.record(conn, "template.put", actor=actor, target=name, ip=ip)
    return get_template(conn, name), created


def delete_template(conn: apsw.Connection, name: str, *, actor: str | None, ip: str | None) -> None:
    """Delete a template; pages that use it render it as empty text from now on."""
    with transaction(conn):
        conn.execute("DELETE FROM _wce_templates WHERE name = ?", (name,))
        if conn.changes() == 0:
            raise NotFound("no such template")
        audit.record(conn, "template.delete", actor=actor, target=name, ip=ip)


def all_values(conn: apsw.Connection) -> dict[str, Any]:
    """Every value by key, decoded."""
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM _wce_values")}


def list_values(conn: apsw.Connection) -> list[Value]:
    """Every value, by key."""
    return [Value(k, json.loads(v), t)
            for k, v, t in conn.execute("SELECT key, value, updated_at FROM _wce_values ORDER BY key")]


def get_value(conn: apsw.Connection, key: str) -> Value:
    """One value, or NotFound."""
    row = conn.execute("SELECT key, value, updated_at FROM _wce_values WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise NotFound("no such value")
    return Value(row[0], json.loads(row[1]), row[2])


def put_value(conn: apsw.Connection, key: str, body: dict[str, Any], *, actor: str | None,
              ip: str | None) -> tuple[Value, bool]:
    """Create or replace a value from `{"value": ANY_JSON}`; (value, created)."""
    check_value_key(key)
    if "value" not in body:
        raise BadRequest("the body must be {\"value\": ...}")
    try:
        text = json.dumps(body["value"], separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise BadRequest("'value' must be plain JSON") from None
    if len(text.encode()) > MAX_VALUE:
        raise Invalid(f"a value is limited to {MAX_VALUE} bytes of JSON")
    with transaction(conn):
        created = conn.execute("SELECT 1 FROM _wce_values WHERE key = ?", (key,)).fetchone() is None
        conn.execute("INSERT INTO _wce_values(key, value, updated_at) VALUES (?, ?, ?)"
                     " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                     (key, text, time.time()))
        audit.record(conn, "value.put", actor=actor, target=key, ip=ip)
    return get_value(conn, key), created


def delete_value(conn: apsw.Connection, key: str, *, actor: str | None, ip: str | None) -> None:
    """Delete a value; pages that read it see nothing there from now on."""
    with transaction(conn):
        conn.execute("DELETE FROM _wce_values WHERE key = ?", (key,))
        if conn.changes() == 0:
            raise NotFound("no such value")
        audit.record(conn, "value.delete", actor=actor, target=key, ip=ip)
