"""What pages share: named Mustache templates (partials and layouts) and JSON values.

Templates are used as `{{> name}}` and `{{< name}}`; values reach every page as `values.KEY`, so
keys are identifiers (a dot would split the Mustache name). Every change writes its audit row in
the same transaction; the render cache learns of it from the commit's change set.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
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
class Item:
    """A stored template or value: its key, its content (a template's source; a value, decoded)
    and when it last changed. Its JSON shape names them as its shelf does (Shelf.public)."""

    key: str
    content: Any
    updated_at: float


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


def _template_text(name: str, body: dict[str, Any]) -> str:
    """`{"source": MUSTACHE}`: the source, checked."""
    source = body.get("source")
    if not isinstance(source, str):
        raise BadRequest("'source' must be a string")
    if len(source.encode()) > MAX_TEMPLATE:
        raise Invalid(f"a template is limited to {MAX_TEMPLATE} bytes")
    check_template(source, f"template {name}")
    return source


def _value_text(key: str, body: dict[str, Any]) -> str:
    """`{"value": ANY_JSON}`: the value as compact JSON text."""
    if "value" not in body:
        raise BadRequest("the body must be {\"value\": ...}")
    try:
        text = json.dumps(body["value"], separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise BadRequest("'value' must be plain JSON") from None
    if len(text.encode()) > MAX_VALUE:
        raise Invalid(f"a value is limited to {MAX_VALUE} bytes of JSON")
    return text


@dataclass(frozen=True, slots=True)
class Shelf:
    """One kind of shared item, stored as (key, text, updated_at) rows of its table: its key is
    checked by `check`, a body becomes the stored text by `encode` and the text is read back by
    `decode`. A deleted item is gone for the pages at once: a template renders as empty text, a
    value as nothing."""

    noun: str  # "template": audit actions `template.put` / `template.delete`, "no such template"
    table: str
    key: str
    column: str
    check: Callable[[str], str]
    encode: Callable[[str, dict[str, Any]], str]
    decode: Callable[[str], Any]

    def public(self, item: Item) -> dict[str, Any]:
        """The JSON shape of an item: `{"name", "source", "updated_at"}` for a template, `{"key",
        "value", "updated_at"}` for a value."""
        return {self.key: item.key, self.column: item.content, "updated_at": item.updated_at}

    def all(self, conn: apsw.Connection) -> dict[str, Any]:
        """Every item's content by key, decoded."""
        return {str(k): self.decode(v) for k, v in conn.execute(f"SELECT {self.key}, {self.column} FROM {self.table}")}

    def items(self, conn: apsw.Connection) -> list[Item]:
        """Every item, by key."""
        return [Item(k, self.decode(v), t) for k, v, t in conn.execute(
            f"SELECT {self.key}, {self.column}, updated_at FROM {self.table} ORDER BY {self.key}")]

    def get(self, conn: apsw.Connection, key: str) -> Item:
        """One item, or NotFound."""
        row = conn.execute(f"SELECT {self.key}, {self.column}, updated_at FROM {self.table} WHERE {self.key} = ?",
                           (key,)).fetchone()
        if row is None:
            raise NotFound(f"no such {self.noun}")
        return Item(row[0], self.decode(row[1]), row[2])

    def put(self, conn: apsw.Connection, key: str, body: dict[str, Any], *, actor: str | None,
            ip: str | None) -> tuple[Item, bool]:
        """Create or replace an item from a request body; (item, created)."""
        text = self.encode(self.check(key), body)
        with transaction(conn):
            created = conn.execute(f"SELECT 1 FROM {self.table} WHERE {self.key} = ?", (key,)).fetchone() is None
            conn.execute(f"INSERT INTO {self.table}({self.key}, {self.column}, updated_at) VALUES (?, ?, ?)"
                         f" ON CONFLICT({self.key}) DO UPDATE SET {self.column} = excluded.{self.column},"
                         " updated_at = excluded.updated_at", (key, text, time.time()))
            audit.record(conn, f"{self.noun}.put", actor=actor, target=key, ip=ip)
        return self.get(conn, key), created

    def delete(self, conn: apsw.Connection, key: str, *, actor: str | None, ip: str | None) -> None:
        """Delete an item."""
        with transaction(conn):
            conn.execute(f"DELETE FROM {self.table} WHERE {self.key} = ?", (key,))
            if conn.changes() == 0:
                raise NotFound(f"no such {self.noun}")
            audit.record(conn, f"{self.noun}.delete", actor=actor, target=key, ip=ip)


TEMPLATES = Shelf("template", "_wce_templates", "name", "source", check_template_name, _template_text, str)
VALUES = Shelf("value", "_wce_values", "key", "value", check_value_key, _value_text, json.loads)
