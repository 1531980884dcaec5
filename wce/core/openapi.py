"""The OpenAPI 3.1 document of one cenv, as one caller sees it.

The fixed routes come documented from the worker's route table (wce.worker.routes), already
chosen for the caller (admin routes only for admins). This module adds what depends on the cenv's
data and the caller's rights: the rows routes of each table the caller may reach (its columns as a
schema, the methods its grants allow), each `/fn/` endpoint and each page the caller may call,
and the envelope. Every operation documents its errors with the contract's error schema
(`default`), so a fuzzer can check each answer against the document.
"""

from __future__ import annotations

import copy
from typing import Any

from .pages import Page
from .permissions import Access, Actor
from .rows import affinity
from .scripts.routing import parse_pattern
from .tables import Table

JSON = "application/json"
OUTPUT = {"integer": {"type": ["integer", "null"]}, "real": {"type": ["number", "null"]},
          "text": {"type": ["string", "null"]}, "blob": {"type": ["string", "null"], "contentEncoding": "base64"},
          "any": {}}
INPUT = {"integer": {"type": ["integer", "boolean", "null"], "minimum": -(2**63), "maximum": 2**63 - 1},
         "real": {"type": ["number", "null"]},
         "text": {"type": ["string", "object", "array", "null"]},
         "blob": {"type": ["string", "null"], "contentEncoding": "base64"},
         "any": {}}
FILTER_SUFFIXES = ("gt", "gte", "lt", "lte", "ne", "like", "in")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


ERROR_ANSWER = {"description": "an error", "content": {JSON: {"schema": _ref("Error")}}}


def _ok(status: str, schema: dict[str, Any] | None, description: str = "success") -> dict[str, Any]:
    out: dict[str, Any] = {status: {"description": description}}
    if schema is not None:
        out[status]["content"] = {JSON: {"schema": schema}}
    out["default"] = ERROR_ANSWER
    return out


def _op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "responses": responses, **extra}


def _row_schema(table: Table) -> dict[str, Any]:
    props = {c.name: dict(OUTPUT[affinity(c.type)]) for c in table.columns}
    if table.key == "rowid":
        props["rowid"] = {"type": "integer"}
    return {"type": "object", "properties": props}


def _input_schema(table: Table) -> dict[str, Any]:
    props = {c.name: dict(INPUT[affinity(c.type)]) for c in table.columns}
    return {"type": "object", "properties": props, "additionalProperties": False, "minProperties": 1}


def _table_paths(table: Table, access: Access, actor: Actor) -> dict[str, Any]:
    name = table.name
    can = {a: access.allowed(actor.role, name, a) for a in ("select", "insert", "update", "delete")}
    paths: dict[str, Any] = {}
    schema_name = f"row_{name}"
    rows: dict[str, Any] = {}
    if can["select"]:
        params: list[dict[str, Any]] = [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "after", "in": "query", "schema": {"type": "string"}},
            {"name": "order", "in": "query", "schema": {"type": "string", "enum": [
                *[c.name for c in table.columns], *[f"-{c.name}" for c in table.columns]]}},
        ]
        if table.fts:
            params.append({"name": "search", "in": "query", "schema": {"type": "string"}})
        for c in table.columns:
            params.append({"name": c.name, "in": "query", "schema": {"type": "string"}})
            for suffix in FILTER_SUFFIXES:
                params.append({"name": f"{c.name}__{suffix}", "in": "query", "schema": {"type": "string"}})
        rows["get"] = _op(f"list_{name}", f"list rows of {name}", _ok("200", {
            "type": "object", "required": ["rows", "next"],
            "properties": {"rows": {"type": "array", "items": _ref(schema_name)}, "next": {"type": ["string", "null"]}},
        }), parameters=params)
    if can["insert"]:
        one = _input_schema(table)
        rows["post"] = _op(f"insert_{name}", f"insert rows into {name}",
                           _ok("201", {"oneOf": [_ref(schema_name), {"type": "array", "items": _ref(schema_name)}]}),
                           requestBody=_json_body({"oneOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": 1000}]}))
    if rows:
        paths[f"/api/tables/{name}/rows"] = rows
    one_row: dict[str, Any] = {}
    key_col = next((c for c in table.columns if c.name == table.key), None)
    integer_key = table.key == "rowid" or (key_col is not None and affinity(key_col.type) == "integer")
    key_schema = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1} if integer_key else {"type": "string"}
    pk = [{"name": "pk", "in": "path", "required": True, "schema": key_schema}]
    if can["select"]:
        one_row["get"] = _op(f"get_{name}", f"one row of {name}", _ok("200", _ref(schema_name)))
    if can["update"]:
        one_row["patch"] = _op(f"update_{name}", f"change a row of {name}", _ok("200", _ref(schema_name)),
                               requestBody=_json_body(_input_schema(table)))
    if can["delete"]:
        one_row["delete"] = _op(f"delete_{name}", f"delete a row of {name}", _ok("204", None))
    if one_row and (table.has_rowid or table.key != "rowid"):
        one_row["parameters"] = pk
        paths[f"/api/tables/{name}/rows/{{pk}}"] = one_row
    return paths


def _may_call(access: str, actor: Actor) -> bool:
    """Whether an endpoint's or a page's access level ("public", "user", "admin") lets the actor in."""
    return access == "public" or (access == "user" and actor.user_id is not None) or actor.is_admin


def _endpoint_paths(endpoints: list[dict[str, Any]], actor: Actor) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in endpoints:
        if not _may_call(ep["access"], actor):
            continue
        pattern = parse_pattern(ep["path"])
        path = "/fn" + (ep["path"] if ep["path"] != "/" else "")
        declared = copy.deepcopy(ep["spec"]) if isinstance(ep.get("spec"), dict) else {}
        op: dict[str, Any] = {
            "operationId": f"fn_{ep['id']}",
            "summary": declared.get("summary", f"{ep['method']} {ep['path']} (Starlark)"),
            "responses": declared.get("responses") or {"default": {"description": "whatever the script answers"}},
        }
        if isinstance(op["responses"], dict):  # the platform's errors (access, budget, a failing script)
            op["responses"].setdefault("default", ERROR_ANSWER)
        for k in ("description", "tags", "requestBody", "deprecated"):
            if k in declared:
                op[k] = declared[k]
        params = [p for p in declared.get("parameters", []) if isinstance(p, dict) and p.get("in") != "path"]
        params += [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for n in pattern.names]
        if params:
            op["parameters"] = params
        paths.setdefault(path, {})[ep["method"].lower()] = op
    return paths


def _page_paths(pages: list[Page], actor: Actor) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for page in pages:
        if _may_call(page.access, actor):
            paths[page.path] = {"get": _op(f"page_{page.id}", f"the page at {page.path}", {
                "200": {"description": "the rendered page", "content": {page.content_type: {"schema": {"type": "string"}}}},
                "304": {"description": "not modified since the ETag given in If-None-Match"},
                "default": ERROR_ANSWER})}
    return paths


ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
USER = {"type": "object", "required": ["id", "username", "role"],
        "properties": {"id": {"type": "integer"}, "username": {"type": "string"}, "role": {"type": "string"}}}


def document(cenv: str, routes: dict[str, Any], tables: list[Table], access: Access, actor: Actor,
             endpoints: list[dict[str, Any]], pages: list[Page], root: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a cenv for one caller: `routes` are the paths of the worker's
    fixed routes this caller may see; `root` is the cenv's path on its host (`/{cenv}` in path
    mode, the default; empty on its own host). A page at `/` replaces the cenv's front page."""
    paths: dict[str, Any] = {**routes, **_page_paths(pages, actor)}
    schemas: dict[str, Any] = {"Error": ERROR, "User": USER}
    for t in tables:
        if access.allowed(actor.role, t.name, "select") or any(
                access.allowed(actor.role, t.name, a) for a in ("insert", "update")):
            schemas[f"row_{t.name}"] = _row_schema(t)
            paths.update(_table_paths(t, access, actor))
    paths.update(_endpoint_paths(endpoints, actor))
    return {
        "openapi": "3.1.0",
        "info": {"title": f"WCE cenv {cenv}", "version": "1",
                 "description": "The HTTP API of one cenv, as the caller who asked for this document may use it."},
        "servers": [{"url": (f"/{cenv}" if root is None else root) or "/"}],
        "security": [{"bearer": []}, {"cookie": []}, {}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                                "cookie": {"type": "apiKey", "in": "cookie", "name": "wce_session"}},
            "schemas": schemas,
        },
        "paths": paths,
    }
