"""`/{cenv}/api/...`: tables, rows, grants, policies, users, config, audit.

Thin: each handler checks who is calling, parses the request and calls wce.core; every decision
about rows is made by wce.core.rows with the tenant's compiled grants and policies. Handlers that
run SQL a tenant wrote (policies, table definitions) run it under the cenv's CPU budget per
request (`@budgeted`): past it the answer is 504, and the worker goes on serving.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from wce.core import accounts, audit, auth, permissions, settings, tables
from wce.core.db import set_size_cap, transaction
from wce.core.errors import BadRequest, Conflict, Invalid, NotFound, Timeout
from wce.core.rows import Rows, parse_int, parse_query

from . import limits
from .http import Call, Reply, json_reply, no_content
from .offload import in_thread
from .routes import ANY_OBJECT, Route, listing, paging
from .tenant import Tenant


def budgeted(handler: Callable[[Call], Awaitable[Reply]]) -> Callable[[Call], Awaitable[Reply]]:
    """The handler, its SQL stopped at the cenv's `cpu_ms_per_request` (limits.sql_budget: 504)."""
    @functools.wraps(handler)
    async def run(call: Call) -> Reply:
        with limits.sql_budget(call.tenant.conn, int(call.tenant.settings["cpu_ms_per_request"])):
            return await handler(call)
    return run


def _tenant_table(call: Call) -> tables.Table:
    return call.tenant.catalog.get(call.params["table"])


def _changed_schema(t: Tenant) -> None:
    t.catalog.invalidate()
    t.access.invalidate()


# tables

async def list_tables(call: Call) -> Reply:
    """The tables the caller may select."""
    actor = call.actor
    t = call.tenant
    visible = [tb.public() for tb in t.catalog.all().values() if t.access.allowed(actor.role, tb.name, "select")]
    return json_reply({"tables": visible})


@budgeted
async def create_table(call: Call) -> Reply:
    """Create from a column list or from one CREATE TABLE / CREATE INDEX statement."""
    body = call.json_object()
    t = call.tenant
    if "sql" in body:
        if not isinstance(body["sql"], str) or set(body) - {"sql", "full_text"}:
            raise BadRequest('give either {"sql"} or {"name", "columns"}')
        sql = body["sql"]
    else:
        sql = tables.create_sql_from_columns(body.get("name"), body.get("columns"))  # type: ignore[arg-type]
    with transaction(t.conn):
        created = tables.create(t.conn, t.guard, sql)
        _changed_schema(t)
        result: dict[str, Any] = {"name": created}
        if created in t.catalog.all():
            if body.get("full_text") is not None:
                tables.add_fts(t.conn, t.catalog.get(created), body["full_text"])
                _changed_schema(t)
            result = t.catalog.get(created).public()
        elif body.get("full_text") is not None:
            raise BadRequest("full_text goes with a table, not an index")
        audit.record(t.conn, "table.create", actor=call.username, target=created, detail={"sql": sql[:2000]}, ip=call.client)
    _changed_schema(t)
    return json_reply(result, status=201)


async def drop_table(call: Call) -> Reply:
    """Drop a table with its full-text index, grants and policies."""
    t = call.tenant
    table = _tenant_table(call)
    with transaction(t.conn):
        tables.drop(t.conn, table)
        audit.record(t.conn, "table.drop", actor=call.username, target=table.name, ip=call.client)
    _changed_schema(t)
    return no_content()


# rows

def _rows(call: Call) -> Rows:
    t = call.tenant
    return Rows(t.conn, t.guard, t.access, call.actor, call.client)


@budgeted
async def list_rows(call: Call) -> Reply:
    """A page of rows: filters, order, keyset cursor, full-text search."""
    table = _tenant_table(call)
    q = parse_query(table, parse_qsl(call.req.query, keep_blank_values=True))
    rows, nxt = _rows(call).list(table, q)
    return json_reply({"rows": rows, "next": nxt})


@budgeted
async def get_row(call: Call) -> Reply:
    """One row by key."""
    table = _tenant_table(call)
    return json_reply(_rows(call).get(table, call.params["pk"]))


@budgeted
async def insert_rows(call: Call) -> Reply:
    """One row (an object) or several (a list) in one transaction."""
    table = _tenant_table(call)
    body = call.json()
    many = isinstance(body, list)
    stored = _rows(call).insert(table, body if many else [body])
    return json_reply(stored if many else stored[0], status=201)


@budgeted
async def patch_row(call: Call) -> Reply:
    """Change some columns of one row."""
    table = _tenant_table(call)
    return json_reply(_rows(call).update(table, call.params["pk"], call.json_object()))


@budgeted
async def delete_row(call: Call) -> Reply:
    """Delete one row."""
    table = _tenant_table(call)
    _rows(call).delete(table, call.params["pk"])
    return no_content()


# grants and policies

async def get_grants(call: Call) -> Reply:
    table = _tenant_table(call)
    return json_reply({"roles": permissions.read_grants(call.tenant.conn, table.name)})


async def put_grants(call: Call) -> Reply:
    t = call.tenant
    table = _tenant_table(call)
    grants = permissions.parse_grants(call.json())
    with transaction(t.conn):
        permissions.write_grants(t.conn, table.name, grants)
        audit.record(t.conn, "permissions.update", actor=call.username, target=table.name, detail={"roles": grants}, ip=call.client)
    t.access.invalidate()
    return json_reply({"roles": permissions.read_grants(t.conn, table.name)})


async def get_policies(call: Call) -> Reply:
    table = _tenant_table(call)
    return json_reply(permissions.read_policies(call.tenant.conn, table.name))


async def put_policies(call: Call) -> Reply:
    t = call.tenant
    table = _tenant_table(call)
    policies = permissions.parse_policies(t.guard, table.name, call.json())
    with transaction(t.conn):
        permissions.write_policies(t.conn, table.name, policies)
        audit.record(t.conn, "policies.update", actor=call.username, target=table.name,
                     detail={"policies": [{"role": r, "action": a, "using": u, "check": c} for r, a, u, c in policies]},
                     ip=call.client)
    t.access.invalidate()
    return json_reply(permissions.read_policies(t.conn, table.name))


# users

def _user_id(call: Call) -> int:
    return parse_int(call.params["id"], NotFound("no such user"))


async def list_users(call: Call) -> Reply:
    return json_reply({"users": accounts.list_users(call.tenant.conn)})


async def create_user(call: Call) -> Reply:
    body = call.json_object()
    username = auth.check_username(body.get("username"))
    password = auth.check_password(body.get("password"))
    role = permissions.check_role(body.get("role", call.tenant.settings["default_role"]), allow_anon=False)
    password_hash = await in_thread(auth.hash_password, password)
    user = accounts.create_user(call.tenant.conn, username, password_hash, role, actor=call.username, ip=call.client)
    return json_reply(accounts.get_user(call.tenant.conn, user.id), status=201)


async def patch_user(call: Call) -> Reply:
    uid = _user_id(call)
    body = call.json_object()
    if not body or set(body) - {"role", "disabled", "password"}:
        raise BadRequest("change any of: role, disabled, password")
    role = permissions.check_role(body["role"], allow_anon=False) if "role" in body else None
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise BadRequest("disabled must be true or false")
    password_hash = None
    if "password" in body:
        password_hash = await in_thread(auth.hash_password, auth.check_password(body["password"]))
    user = accounts.update_user(call.tenant.conn, uid, role=role, disabled=disabled, password_hash=password_hash,
                                actor=call.username, ip=call.client)
    return json_reply(user)


async def delete_user(call: Call) -> Reply:
    accounts.delete_user(call.tenant.conn, _user_id(call), actor=call.username, ip=call.client)
    return no_content()


# config and audit

def _config(t: Tenant) -> dict[str, Any]:
    """The settings, and the ceilings of the caps among them (set by the operator: read-only here)."""
    return {**t.settings, "caps": t.caps}


async def get_config(call: Call) -> Reply:
    return json_reply(_config(call.tenant))


async def patch_config(call: Call) -> Reply:
    """Validate every key first (a cap at most its ceiling), then store them all with one audit
    row, and apply them."""
    body = call.json_object()
    if not body:
        raise BadRequest("nothing to change")
    if "caps" in body:
        raise BadRequest("caps are set by this server's operator; lower a cap with its own key instead")
    t = call.tenant
    for k, v in body.items():
        settings.validate(k, v, t.caps)
    with transaction(t.conn):
        for k, v in body.items():
            settings.write(t.conn, k, v, t.caps)
        audit.record(t.conn, "config.update", actor=call.username, detail={"changed": body}, ip=call.client)
    t.settings.update(body)
    if "max_db_mb" in body:
        set_size_cap(t.conn, int(body["max_db_mb"]))
    await t.announce_settings()
    return json_reply(_config(t))


async def list_audit(call: Call) -> Reply:
    limit, before = call.paging(500)
    entries = audit.page(call.tenant.conn, limit, before)
    return json_reply({"entries": entries, "next": entries[-1]["id"] if len(entries) == limit else None})


GRANTS = {"type": "object", "required": ["roles"], "properties": {"roles": {"type": "object", "additionalProperties": {
    "type": "object", "properties": {a: {"type": "boolean"} for a in ("select", "insert", "update", "delete")}}}}}
POLICIES = {"type": "array", "items": {"type": "object", "required": ["role", "action"], "properties": {
    "role": {"type": "string"}, "action": {"type": "string", "enum": ["select", "insert", "update", "delete", "all"]},
    "using": {"type": ["string", "null"]}, "check": {"type": ["string", "null"]}}}}
NEW_USER = {"type": "object", "required": ["username", "password"], "properties": {
    "username": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    "password": {"type": "string", "minLength": 8, "maxLength": 1024}, "role": {"type": "string"}}}
USER_CHANGE = {"type": "object", "properties": {"role": {"type": "string"}, "disabled": {"type": "boolean"},
                                                "password": {"type": "string"}}}
SQL = (Invalid, Timeout)  # a tenant's SQL: refused, or past the CPU budget

ROUTES = (
    Route("GET", "/api/tables", list_tables, "public", "tables you may read", answer=listing("tables")),
    Route("POST", "/api/tables", create_table, "admin", "create a table or index", body=ANY_OBJECT, ok=(201,),
          answer=ANY_OBJECT, errors=(Conflict, *SQL)),
    Route("DELETE", "/api/tables/{table}", drop_table, "admin", "drop a table", ok=(204,)),
    Route("GET", "/api/tables/{table}/rows", list_rows, "grant", "list rows", per="tables"),
    Route("POST", "/api/tables/{table}/rows", insert_rows, "grant", "insert rows", per="tables"),
    Route("GET", "/api/tables/{table}/rows/{pk}", get_row, "grant", "one row", per="tables"),
    Route("PATCH", "/api/tables/{table}/rows/{pk}", patch_row, "grant", "change a row", per="tables"),
    Route("DELETE", "/api/tables/{table}/rows/{pk}", delete_row, "grant", "delete a row", per="tables"),
    Route("GET", "/api/permissions/{table}", get_grants, "admin", "grants of a table", answer=GRANTS),
    Route("PUT", "/api/permissions/{table}", put_grants, "admin", "replace the grants", body=GRANTS, answer=GRANTS,
          errors=(Invalid,)),
    Route("GET", "/api/policies/{table}", get_policies, "admin", "row policies of a table", answer=POLICIES),
    Route("PUT", "/api/policies/{table}", put_policies, "admin", "replace the row policies", body=POLICIES,
          answer=POLICIES, errors=SQL),
    Route("GET", "/api/users", list_users, "admin", "users", answer=listing("users")),
    Route("POST", "/api/users", create_user, "admin", "add a user", body=NEW_USER, ok=(201,), answer=ANY_OBJECT,
          errors=(Conflict, Invalid)),
    Route("PATCH", "/api/users/{id}", patch_user, "admin", "change a user", body=USER_CHANGE, answer=ANY_OBJECT,
          errors=(Conflict, Invalid)),
    Route("DELETE", "/api/users/{id}", delete_user, "admin", "remove a user", ok=(204,), errors=(Conflict,)),
    Route("GET", "/api/config", get_config, "admin", "settings", answer=ANY_OBJECT),
    Route("PATCH", "/api/config", patch_config, "admin", "change settings", body=ANY_OBJECT, answer=ANY_OBJECT,
          errors=(Invalid,)),
    Route("GET", "/api/audit", list_audit, "admin", "audit log, newest first", query=paging(500),
          answer=listing("entries", next={"type": ["integer", "null"]})),
)
