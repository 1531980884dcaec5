"""The OpenAPI 3.1 document of one cenv, as one caller sees it.

Built from what exists (tables and their columns, endpoints and their declared operations) and
what the caller may do (grants): a table the caller cannot select is absent, the admin routes
appear only for admins. Every operation documents its errors with the contract's error schema
(`default`), so a fuzzer can check each answer against the document.
"""

from __future__ import annotations

import copy
from typing import Any

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


def _ok(status: str, schema: dict[str, Any] | None, description: str = "success") -> dict[str, Any]:
    out: dict[str, Any] = {status: {"description": description}}
    if schema is not None:
        out[status]["content"] = {JSON: {"schema": schema}}
    out["default"] = {"description": "an error", "content": {JSON: {"schema": _ref("Error")}}}
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


def _endpoint_paths(endpoints: list[dict[str, Any]], actor: Actor) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in endpoints:
        if ep["access"] == "admin" and not actor.is_admin:
            continue
        if ep["access"] == "user" and actor.user_id is None:
            continue
        pattern = parse_pattern(ep["path"])
        path = "/fn" + (ep["path"] if ep["path"] != "/" else "")
        declared = copy.deepcopy(ep["spec"]) if isinstance(ep.get("spec"), dict) else {}
        op: dict[str, Any] = {
            "operationId": f"fn_{ep['id']}",
            "summary": declared.get("summary", f"{ep['method']} {ep['path']} (Starlark)"),
            "responses": declared.get("responses") or {"default": {"description": "whatever the script answers"}},
        }
        for k in ("description", "tags", "requestBody", "deprecated"):
            if k in declared:
                op[k] = declared[k]
        params = [p for p in declared.get("parameters", []) if isinstance(p, dict) and p.get("in") != "path"]
        params += [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for n in pattern.names]
        if params:
            op["parameters"] = params
        paths.setdefault(path, {})[ep["method"].lower()] = op
    return paths


ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
USER = {"type": "object", "required": ["id", "username", "role"],
        "properties": {"id": {"type": "integer"}, "username": {"type": "string"}, "role": {"type": "string"}}}
CREDENTIALS = {"type": "object", "required": ["username", "password"], "properties": {
    "username": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    "password": {"type": "string", "minLength": 8, "maxLength": 1024}}}
ANY_OBJECT = {"type": "object"}


def _auth_paths() -> dict[str, Any]:
    return {
        "/auth/login": {"post": _op("login", "sign in", _ok("200", {"type": "object", "required": ["token", "expires_at", "user"],
                        "properties": {"token": {"type": "string"}, "expires_at": {"type": "integer"}, "user": _ref("User")}}),
                        requestBody=_json_body(CREDENTIALS), security=[])},
        "/auth/logout": {"post": _op("logout", "sign out (revokes the session)", _ok("204", None))},
        "/auth/register": {"post": _op("register", "sign up when registration is open",
                           _ok("201", {"type": "object", "properties": {"user": _ref("User")}}),
                           requestBody=_json_body(CREDENTIALS), security=[])},
        "/auth/me": {"get": _op("me", "the signed-in user", _ok("200", _ref("User")))},
        "/auth/password": {"post": _op("change_password", "change one's password", _ok("204", None),
                           requestBody=_json_body({"type": "object", "required": ["old_password", "new_password"], "properties": {
                               "old_password": {"type": "string"}, "new_password": {"type": "string", "minLength": 8}}}))},
    }


def _admin_paths() -> dict[str, Any]:
    table_param = [{"name": "table", "in": "path", "required": True, "schema": {"type": "string"}}]
    id_param = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}]
    grants = {"type": "object", "required": ["roles"], "properties": {"roles": {"type": "object", "additionalProperties": {
        "type": "object", "properties": {a: {"type": "boolean"} for a in ("select", "insert", "update", "delete")}}}}}
    policy = {"type": "object", "required": ["role", "action"], "properties": {
        "role": {"type": "string"}, "action": {"type": "string", "enum": ["select", "insert", "update", "delete", "all"]},
        "using": {"type": ["string", "null"]}, "check": {"type": ["string", "null"]}}}
    script = {"type": "object"}
    return {
        "/api/tables/{table}": {"parameters": table_param, "delete": _op("drop_table", "drop a table", _ok("204", None))},
        "/api/permissions/{table}": {"parameters": table_param,
                                     "get": _op("get_permissions", "grants of a table", _ok("200", grants)),
                                     "put": _op("put_permissions", "replace the grants", _ok("200", grants), requestBody=_json_body(grants))},
        "/api/policies/{table}": {"parameters": table_param,
                                  "get": _op("get_policies", "row policies of a table", _ok("200", {"type": "array", "items": policy})),
                                  "put": _op("put_policies", "replace the row policies", _ok("200", {"type": "array", "items": policy}),
                                             requestBody=_json_body({"type": "array", "items": policy}))},
        "/api/users": {"get": _op("list_users", "users", _ok("200", ANY_OBJECT)),
                       "post": _op("create_user", "add a user", _ok("201", ANY_OBJECT), requestBody=_json_body({
                           **CREDENTIALS, "properties": {**CREDENTIALS["properties"], "role": {"type": "string"}}}))},
        "/api/users/{id}": {"parameters": id_param,
                            "patch": _op("update_user", "change a user", _ok("200", ANY_OBJECT), requestBody=_json_body({
                                "type": "object", "properties": {"role": {"type": "string"}, "disabled": {"type": "boolean"},
                                                                 "password": {"type": "string"}}})),
                            "delete": _op("delete_user", "remove a user", _ok("204", None))},
        "/api/config": {"get": _op("get_config", "settings", _ok("200", ANY_OBJECT)),
                        "patch": _op("patch_config", "change settings", _ok("200", ANY_OBJECT), requestBody=_json_body(ANY_OBJECT))},
        "/api/audit": {"get": _op("audit", "audit log, newest first", _ok("200", ANY_OBJECT), parameters=[
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            {"name": "before", "in": "query", "schema": {"type": "integer"}}])},
        "/api/endpoints": {"get": _op("list_endpoints", "endpoints", _ok("200", ANY_OBJECT)),
                           "post": _op("create_endpoint", "add an endpoint", _ok("201", script), requestBody=_json_body(script))},
        "/api/endpoints/{id}": {"parameters": id_param,
                                "get": _op("get_endpoint", "an endpoint", _ok("200", script)),
                                "put": _op("put_endpoint", "replace an endpoint", _ok("200", script), requestBody=_json_body(script)),
                                "delete": _op("delete_endpoint", "remove an endpoint", _ok("204", None))},
        "/api/endpoints/{id}/test": {"parameters": id_param,
                                     "post": _op("test_endpoint", "run on a sample request (rolled back)", _ok("200", ANY_OBJECT),
                                                 requestBody=_json_body(ANY_OBJECT, required=False))},
        "/api/triggers": {"get": _op("list_triggers", "triggers", _ok("200", ANY_OBJECT)),
                          "post": _op("create_trigger", "add a trigger", _ok("201", script), requestBody=_json_body(script))},
        "/api/triggers/{id}": {"parameters": id_param,
                               "get": _op("get_trigger", "a trigger", _ok("200", script)),
                               "put": _op("put_trigger", "replace a trigger", _ok("200", script), requestBody=_json_body(script)),
                               "delete": _op("delete_trigger", "remove a trigger", _ok("204", None))},
        "/api/logs": {"get": _op("script_logs", "what scripts printed", _ok("200", ANY_OBJECT), parameters=[
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "before", "in": "query", "schema": {"type": "integer"}}])},
    }


def document(cenv: str, tables: list[Table], access: Access, actor: Actor, endpoints: list[dict[str, Any]],
             extra_admin_paths: dict[str, Any] | None = None, root: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a cenv for one caller; `root` is the cenv's path on its host
    (`/{cenv}` in path mode, the default; empty on its own host)."""
    paths: dict[str, Any] = {
        **_auth_paths(),
        "/api/tables": {"get": _op("list_tables", "tables you may read", _ok("200", {"type": "object", "properties": {
            "tables": {"type": "array", "items": ANY_OBJECT}}}))},
        "/api/openapi.json": {"get": _op("openapi", "this document", _ok("200", ANY_OBJECT))},
    }
    if actor.is_admin:
        paths["/api/tables"]["post"] = _op("create_table", "create a table or index", _ok("201", ANY_OBJECT),
                                          requestBody=_json_body(ANY_OBJECT))
        paths.update(_admin_paths())
        paths.update(extra_admin_paths or {})
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
