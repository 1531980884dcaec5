"""Who may do what to which rows: table grants per role, and row policies compiled to SQL.

Grants (`_wce_table_permissions`) are deny-by-default: a role without a row for a table may do
nothing to it; `admin` may do everything and has no policies. Row policies (`_wce_row_policies`)
follow PostgreSQL's row-level security: for a role and action, `using` expressions decide which
existing rows are visible (select) or targetable (update, delete), `check` expressions must hold
for rows inserted or left behind by an update; several policies are ORed; an update policy without
`check` reuses its `using`; an action with no policy for the role leaves rows unfiltered.

Every path (the REST routes, Starlark's `db`, realtime events) asks the same `Access` object, which
compiles each (role, table, action) once into an SQL condition with the bound parameters
`:user_id`, `:username`, `:role`, and drops the compiled form whenever grants or policies change.
The conditions always run under wce.core.sqlguard, so a policy can never read `_wce_` tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apsw

from . import sqlguard
from .errors import BadRequest, Invalid

ACTIONS = ("select", "insert", "update", "delete")
POLICY_ACTIONS = (*ACTIONS, "all")


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller as permissions see it."""

    user_id: int | None
    username: str | None
    role: str

    @classmethod
    def anon(cls) -> Actor:
        """The unauthenticated caller."""
        return cls(None, None, "anon")

    @property
    def is_admin(self) -> bool:
        """Admins bypass grants and policies."""
        return self.role == "admin"

    def params(self) -> dict[str, Any]:
        """The bound parameters a policy expression may use."""
        return {"user_id": self.user_id, "username": self.username, "role": self.role}


@dataclass(frozen=True, slots=True)
class Rule:
    """The compiled decision for (role, table, action): `sql` is None when rows are unfiltered."""

    granted: bool
    using: str | None
    check: str | None


class Access:
    """Grants and policies of one cenv, compiled on first use and cached until they change."""

    def __init__(self, conn: apsw.Connection, guard: sqlguard.Guard) -> None:
        self.conn = conn
        self.guard = guard
        self._rules: dict[tuple[str, str, str], Rule] = {}
        # Bumped by every invalidate: put it in the sqlguard scope of any statement whose
        # authorization depended on grants, so a cached preparation never outlives them.
        self.generation = 0

    def invalidate(self) -> None:
        """Forget compiled rules (call after any change of grants, policies or tables)."""
        self._rules.clear()
        self.generation += 1

    def rule(self, role: str, table: str, action: str) -> Rule:
        """The compiled rule for a role's action on a table."""
        key = (role, table, action)
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = self._compile(role, table, action)
        return rule

    def _compile(self, role: str, table: str, action: str) -> Rule:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if role == "admin":
            return Rule(True, None, None)
        row = self.conn.execute(
            f"SELECT can_{action} FROM _wce_table_permissions WHERE table_name = ? AND role = ?", (table, role)
        ).fetchone()
        granted = bool(row and row[0])
        usings: list[str] = []
        checks: list[str] = []
        for using, check in self.conn.execute(
            "SELECT using_expr, check_expr FROM _wce_row_policies WHERE table_name = ? AND role = ?"
            " AND action IN (?, 'all') ORDER BY id",
            (table, role, action),
        ):
            if action in ("select", "update", "delete"):
                usings.append(using or "1")
            if action == "insert":
                checks.append(check or using or "1")
            elif action == "update":
                checks.append(check or using or "1")
        return Rule(granted, _or(usings), _or(checks))

    def allowed(self, role: str, table: str, action: str) -> bool:
        """The table-level grant (admin: always)."""
        return self.rule(role, table, action).granted

    def visible_rowids(self, actor: Actor, table: str, rowids: list[int]) -> set[int]:
        """The rows among rowids that actor may select (all when no select policy applies)."""
        if not rowids:
            return set()
        rule = self.rule(actor.role, table, "select")
        if not rule.granted:
            return set()
        if rule.using is None:
            return set(rowids)
        # named and positional parameters cannot mix: inline the actor's values as named ones
        params = {**actor.params(), **{f"r{i}": r for i, r in enumerate(rowids)}}
        marks = ",".join(f":r{i}" for i in range(len(rowids)))
        _, rows = sqlguard.run(
            self.guard, sqlguard.Mode.READ,
            f"SELECT rowid FROM {quote(table)} WHERE rowid IN ({marks}) AND ({rule.using})", params,
            scope=f"vis:{actor.role}:{len(rowids)}",
        )
        return {r[0] for r in rows}


def _or(exprs: list[str]) -> str | None:
    if not exprs:
        return None
    if len(exprs) == 1:
        return f"({exprs[0]})"
    return "(" + " OR ".join(f"({e})" for e in exprs) + ")"


def quote(name: str) -> str:
    """An SQL identifier, quoted. Callers must have checked the name against the schema first."""
    return '"' + name.replace('"', '""') + '"'


def check_expression(guard: sqlguard.Guard, table: str, expr: str) -> str:
    """Validate a policy expression: one SQL expression over table's columns, read-only, no `_wce_`."""
    if not isinstance(expr, str) or not expr.strip():
        raise Invalid("a policy expression must be a non-empty string")
    if len(expr) > 4000:
        raise Invalid("a policy expression is limited to 4000 characters")
    _balanced(expr)
    sqlguard.check(guard, sqlguard.Mode.READ, f"SELECT 1 FROM {quote(table)} WHERE ({expr})")
    sqlguard.check(guard, sqlguard.Mode.READ, f"SELECT CASE WHEN ({expr}) THEN 1 END FROM {quote(table)}")
    return expr.strip()


def _balanced(expr: str) -> None:
    """Refuse anything that could close our parentheses or start a comment or statement."""
    depth = 0
    i = 0
    n = len(expr)
    while i < n:
        c = expr[i]
        if c in "'\"`[":
            close = {"'": "'", '"': '"', "`": "`", "[": "]"}[c]
            j = expr.find(close, i + 1)
            while j != -1 and close != "]" and j + 1 < n and expr[j + 1] == close:
                j = expr.find(close, j + 2)
            if j == -1:
                raise Invalid("unterminated quote in policy expression")
            i = j + 1
            continue
        if expr.startswith("--", i) or expr.startswith("/*", i) or c == ";":
            raise Invalid("comments and ';' are not allowed in a policy expression")
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise Invalid("unbalanced ')' in policy expression")
        i += 1
    if depth:
        raise Invalid("unbalanced '(' in policy expression")


def read_grants(conn: apsw.Connection, table: str) -> dict[str, dict[str, bool]]:
    """`{"roles": {role: {action: bool}}}` body of `GET permissions/{table}` (without the wrapper)."""
    return {
        role: {"select": bool(s), "insert": bool(i), "update": bool(u), "delete": bool(d)}
        for role, s, i, u, d in conn.execute(
            "SELECT role, can_select, can_insert, can_update, can_delete FROM _wce_table_permissions"
            " WHERE table_name = ? ORDER BY role", (table,))
    }


ROLE_RE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def check_role(role: object, *, allow_admin: bool = True, allow_anon: bool = True) -> str:
    """A role name: 1-32 of lowercase letters, digits, '_' or '-'."""
    if not isinstance(role, str) or not 0 < len(role) <= 32 or not set(role) <= ROLE_RE_CHARS:
        raise BadRequest("a role is 1-32 lowercase letters, digits, '_' or '-'")
    if (role == "admin" and not allow_admin) or (role == "anon" and not allow_anon):
        raise BadRequest(f"role {role!r} is not allowed here")
    return role


def parse_grants(body: Any) -> dict[str, dict[str, bool]]:
    """Validate a `PUT permissions/{table}` body: `{"roles": {role: {action: bool}}}`."""
    if not isinstance(body, dict) or not isinstance(body.get("roles"), dict):
        raise BadRequest('body must be {"roles": {ROLE: {"select": bool, ...}}}')
    out = {}
    for role, acts in body["roles"].items():
        check_role(role)
        if role == "admin":
            raise BadRequest("admin may do everything; it has no grants to set")
        if not isinstance(acts, dict) or not set(acts) <= set(ACTIONS) or not all(isinstance(v, bool) for v in acts.values()):
            raise BadRequest(f"grants of {role} must map select/insert/update/delete to true or false")
        out[role] = {a: bool(acts.get(a, False)) for a in ACTIONS}
    return out


def write_grants(conn: apsw.Connection, table: str, grants: dict[str, dict[str, bool]]) -> None:
    """Replace every grant of a table."""
    conn.execute("DELETE FROM _wce_table_permissions WHERE table_name = ?", (table,))
    conn.executemany(
        "INSERT INTO _wce_table_permissions(table_name, role, can_select, can_insert, can_update, can_delete)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(table, role, g["select"], g["insert"], g["update"], g["delete"]) for role, g in grants.items()],
    )


def read_policies(conn: apsw.Connection, table: str) -> list[dict[str, Any]]:
    """The policies of a table, in the contract's shape."""
    return [
        {"role": role, "action": action, "using": using, "check": check}
        for role, action, using, check in conn.execute(
            "SELECT role, action, using_expr, check_expr FROM _wce_row_policies WHERE table_name = ? ORDER BY id",
            (table,))
    ]


def parse_policies(guard: sqlguard.Guard, table: str, body: Any) -> list[tuple[str, str, str | None, str | None]]:
    """Validate a `PUT policies/{table}` body (a list); every expression is checked under the guard."""
    if not isinstance(body, list):
        raise BadRequest('body must be a list of {"role", "action", "using", "check"}')
    if len(body) > 100:
        raise BadRequest("at most 100 policies per table")
    out = []
    for p in body:
        if not isinstance(p, dict) or not set(p) <= {"role", "action", "using", "check"}:
            raise BadRequest('each policy is {"role", "action", "using", "check"}')
        role = check_role(p.get("role"), allow_admin=False)
        action = p.get("action")
        if action not in POLICY_ACTIONS:
            raise BadRequest(f"action must be one of {', '.join(POLICY_ACTIONS)}")
        using, check = p.get("using"), p.get("check")
        if using is None and check is None:
            raise BadRequest("a policy needs a using or a check expression")
        if action == "insert" and using is not None:
            raise BadRequest("an insert policy takes only check (there is no existing row)")
        if action in ("select", "delete") and check is not None:
            raise BadRequest(f"a {action} policy takes only using")
        using = check_expression(guard, table, using) if using is not None else None
        check = check_expression(guard, table, check) if check is not None else None
        out.append((role, action, using, check))
    return out


def write_policies(conn: apsw.Connection, table: str, policies: list[tuple[str, str, str | None, str | None]]) -> None:
    """Replace every policy of a table."""
    conn.execute("DELETE FROM _wce_row_policies WHERE table_name = ?", (table,))
    conn.executemany(
        "INSERT INTO _wce_row_policies(table_name, role, action, using_expr, check_expr) VALUES (?, ?, ?, ?, ?)",
        [(table, *p) for p in policies],
    )
