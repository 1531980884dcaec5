"""Running a tenant's Starlark in this worker: its Host (`db`, `print`), its budget, its transaction.

A call runs on the worker's own thread, synchronously: the connection is never shared between
threads, and `check_cancelled` (polled every ~1000 Starlark steps) plus SQLite's progress handler
end it when its CPU budget (`cpu_ms_per_request`) is spent. One call is one transaction: every
write it makes commits together when it returns, or none does.

Backstops for what polling cannot stop (a single huge builtin): RLIMIT_CPU (the SIGXCPU flag is
polled too), RLIMIT_AS (a failed allocation surfaces as a Rust panic or MemoryError: the answer is
503 and the worker retires after answering; or it aborts the process), and the gateway's hard
deadline (SIGKILL). Tenant code runs under the crash marker (wce.worker.crash_marker), so that a
process it kills is answered for, and the script counted (wce.core.scripts.crashes): a script
disabled for crashing its worker is answered 503 here without running.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import apsw

from wce.core import audit, sqlguard
from wce.core.errors import BadRequest, NotFound, Timeout, Unavailable, WceError
from wce.core.permissions import Actor
from wce.core.rows import Rows, to_json, to_sql
from wce.core.scripts import crashes, runtime
from wce.core.scripts.routing import EndpointRouter

from typing import TYPE_CHECKING

from . import crash_marker, limits

if TYPE_CHECKING:
    from .tenant import Tenant

MAX_PRINT_LINES = 200
MAX_PRINT_BYTES = 64 * 1024
PROGRESS_STEPS = 10_000
MAX_MODULES = 1000  # compiled scripts kept; past it the cache starts afresh


class ScriptHost:
    """What one script call may reach: the cenv's data with its caller's permissions."""

    def __init__(self, tenant: Tenant, actor: Actor, ip: str | None, label: str, *,
                 track_reads: bool = False) -> None:
        self.tenant, self.actor, self.ip, self.label = tenant, actor, ip, label
        self.track_reads = track_reads
        self.reads: set[str] = set()  # tables read, for a page context's render-on-write
        self.lines: list[str] = []
        self._printed = 0
        self.last_error: WceError | None = None
        self.rows = Rows(tenant.conn, tenant.guard, tenant.access, actor, ip)
        self.begin: str | None = None  # the call's transaction, begun at its first db call (execute)
        self.began = False

    def _guarded(self, fn: Any, *args: Any) -> Any:
        if not self.began and self.begin is not None:
            self.tenant.conn.execute(self.begin)
            self.began = True
        try:
            return fn(*args)
        except WceError as exc:
            self.last_error = exc
            raise
        except apsw.InterruptError:
            self.last_error = Timeout("the script ran past its CPU budget")
            raise self.last_error from None

    def _table_filter(self, table: str, action: str) -> bool:
        act = "select" if action == "read" else action
        rule = self.tenant.access.rule(self.actor.role, table, act)
        # raw SQL cannot be bound by row policies: a table with one is reachable only through db.get & co
        return rule.granted and rule.using is None and rule.check is None

    def db_query(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            if not isinstance(sql, str):
                raise BadRequest("db.query takes an SQL string")
            params = [to_sql(a, "argument") for a in args]
            t = self.tenant
            if self.track_reads:
                self.reads |= t.scripts.tables_read(sql)
            if self.actor.is_admin:
                before = t.conn.total_changes()
                cols, rows = sqlguard.run(t.guard, sqlguard.Mode.DATA, sql, params, scope="script-admin")
                if t.conn.total_changes() != before:
                    audit.record(t.conn, "row.write_sql", actor=self.actor.username, target=self.label,
                                 detail={"sql": sql[:500]}, ip=self.ip)
            else:
                cols, rows = sqlguard.run(t.guard, sqlguard.Mode.READ, sql, params,
                                          scope=f"script:{self.actor.role}:{t.access.generation}",
                                          table_filter=self._table_filter)
            return [{c: to_json(v) for c, v in zip(cols, r, strict=True)} for r in rows]
        return self._guarded(run)  # type: ignore[no-any-return]

    def db_get(self, table: str, pk: Any) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            self.reads.add(str(table))
            try:
                return self.rows.get(self.tenant.catalog.get(str(table)), str(pk))
            except NotFound:
                return None
        return self._guarded(run)  # type: ignore[no-any-return]

    def db_insert(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        return self._guarded(lambda: self.rows.insert(self.tenant.catalog.get(str(table)), [row])[0])  # type: ignore[no-any-return]

    def db_update(self, table: str, pk: Any, changes: dict[str, Any]) -> dict[str, Any]:
        return self._guarded(lambda: self.rows.update(self.tenant.catalog.get(str(table)), str(pk), changes))  # type: ignore[no-any-return]

    def db_delete(self, table: str, pk: Any) -> None:
        self._guarded(lambda: self.rows.delete(self.tenant.catalog.get(str(table)), str(pk)))

    def print(self, line: str) -> None:
        if len(self.lines) < MAX_PRINT_LINES and self._printed < MAX_PRINT_BYTES:
            line = line[: MAX_PRINT_BYTES - self._printed]
            self.lines.append(line)
            self._printed += len(line)


def execute(tenant: Tenant, compiled: runtime.Compiled, raw: dict[str, Any], host: ScriptHost, *,
            commit: bool = True) -> tuple[Any, float]:
    """Run a script call as one transaction under the cenv's CPU budget; its value and CPU ms.

    commit=False rolls the call's writes back (the editor's test panel).
    """
    conn = tenant.conn
    if host.label in tenant.scripts.disabled:  # crashed its worker too often (wce.core.scripts.crashes)
        tenant.scripts.refuse_if_disabled(host.label)
    cpu0 = time.thread_time()
    over = limits.over_budget(int(tenant.settings["cpu_ms_per_request"]))

    def should_stop() -> bool:
        if over():
            raise Timeout("the script ran past its CPU budget")
        return False

    nested = not conn.getautocommit()  # e.g. a page context rendered while its page is saved
    begin, done, undo = (("SAVEPOINT wce_script", "RELEASE wce_script", "ROLLBACK TO wce_script; RELEASE wce_script")
                         if nested else ("BEGIN", "COMMIT", "ROLLBACK"))
    # the transaction begins at the script's first db call (ScriptHost._guarded): a script that
    # never reads or writes costs no BEGIN/COMMIT, and one that does sees one snapshot throughout
    host.begin, host.began = begin, False
    conn.set_progress_handler(over, PROGRESS_STEPS)
    marked = crash_marker.running(host.label)
    try:
        value = runtime.call(compiled, raw, host, should_stop)
        if host.began:
            conn.execute(done if commit else undo)
    except BaseException as exc:
        if host.began and (nested or not conn.getautocommit()):
            conn.execute(undo)
        if isinstance(exc, (MemoryError,)) or type(exc).__name__ == "PanicException":
            tenant.retire_after_reply = True
            crash_marker.panicked(host.label)
            raise Unavailable("the script ran past the cenv's memory cap") from None
        raise
    finally:
        crash_marker.done(marked)
        host.begin = None
        conn.set_progress_handler(None)
    return value, (time.thread_time() - cpu0) * 1000


COMPILE_SECONDS = 5


def compile_in_child(source: str, kind: str) -> None:
    """Compile a script in a forked child first: a source whose compilation exhausts memory or time
    kills the child, not this worker. Raises ScriptSyntaxError with what the child found."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        code = 0
        try:
            signal.alarm(COMPILE_SECONDS)
            runtime.compile_script(source, kind)
            msg: dict[str, Any] = {"ok": True}
        except runtime.ScriptSyntaxError as exc:
            msg = {"ok": False, "message": exc.detail, "line": exc.line, "column": exc.column}
        except BaseException as exc:
            msg = {"ok": False, "message": f"compiling failed: {type(exc).__name__}", "line": None, "column": None}
        try:
            os.write(write_fd, json.dumps(msg).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    try:
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not chunks:
        raise runtime.ScriptSyntaxError("compiling this script exhausts the cenv's memory or time", None, None)
    msg = json.loads(b"".join(chunks))
    if not msg["ok"]:
        raise runtime.ScriptSyntaxError(msg["message"], msg["line"], msg["column"])


# Headers an endpoint may not send: framing (the gateway's), cookies (the platform's session lives
# there), service-worker scope and site-data wiping (they act beyond the cenv's own pages on a
# shared origin), and CORS (the gateway answers it, never with credentials: wce.gateway.origins).
FORBIDDEN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "set-cookie",
                               "service-worker-allowed", "clear-site-data"})


def endpoint_reply(value: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """What handle_request returned, as an HTTP answer (ScriptFailed if it cannot be one)."""
    if isinstance(value, dict) and value.get("__wce_response__") is True:
        status = value.get("status", 200)
        if type(status) is not int or not 100 <= status <= 599:
            raise runtime.ScriptFailed("response(status=...) must be an integer from 100 to 599")
        headers: list[tuple[str, str]] = []
        for k, v in (value.get("headers") or {}).items():
            if not isinstance(k, str) or not isinstance(v, str) or any(c in k + v for c in "\r\n\0"):
                raise runtime.ScriptFailed("response headers must be strings without line breaks")
            if k.lower() in FORBIDDEN_HEADERS or k.lower().startswith("access-control-"):
                raise runtime.ScriptFailed(f"a script may not set the {k} header")
            headers.append((k.lower(), v))
        body = value.get("body")
        ctype = value.get("content_type")
        if body is None:
            data = b""
        elif isinstance(body, str):
            data = body.encode()
            ctype = ctype or "text/plain; charset=utf-8"
        else:
            data = _json(body)
            ctype = ctype or "application/json"
        if ctype:
            if not isinstance(ctype, str) or any(c in ctype for c in "\r\n\0"):
                raise runtime.ScriptFailed("content_type must be a string")
            headers.append(("content-type", ctype))
        return status, headers, data
    if isinstance(value, (dict, list)):
        return 200, [("content-type", "application/json")], _json(value)
    raise runtime.ScriptFailed("handle_request must return a dict, a list or response(...)")


# json.dumps with these arguments would build this encoder on every call
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _json(value: Any) -> bytes:
    try:
        return _ENCODER.encode(value).encode()
    except (TypeError, ValueError) as exc:
        raise runtime.ScriptFailed(f"the return value is not JSON: {exc}") from None


def public_error(exc: WceError, is_admin: bool) -> WceError:
    """A script failure as the caller may see it: the script's message and position for admins,
    a generic message for everyone else (a script's error text may quote data)."""
    if isinstance(exc, runtime.ScriptFailed) and is_admin:
        out = runtime.ScriptFailed(exc.detail, exc.line, exc.column)
        out.message = exc.detail + (f" (line {exc.line}, column {exc.column})" if exc.line else "")
        return out
    return exc


class ScriptRegistry:
    """Compiled scripts and the endpoint routing table of one cenv, rebuilt when scripts change.

    A stored script is read and compiled once, then served from memory while
    `EventBus.version("_wce_scripts")` holds (this connection's commits to the table, any other
    connection's commit). Any change drops the routing table and every
    script's stored row; a script whose source did not change keeps its compiled module. So a
    script saved is what the very next request runs, from whichever connection it was saved.
    """

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self._compiled: dict[int, tuple[float, runtime.Compiled]] = {}  # page contexts (negative ids)
        self._scripts: dict[int, tuple[dict[str, Any], runtime.Compiled]] = {}  # valid for _stamp
        self._modules: dict[int, tuple[str, str, runtime.Compiled]] = {}  # id -> (kind, source, compiled)
        self._router: EndpointRouter | None = None
        self._stamp: tuple[int, ...] | None = None
        self._reads: dict[tuple[int, str], frozenset[str]] = {}
        # labels of the scripts disabled for crashing their worker -> their crashes (read again
        # whenever the scripts change; a page saved since is found out on its next render)
        self.disabled: dict[str, int] = crashes.disabled(tenant.conn)

    def invalidate(self) -> None:
        """Forget the routing table and the stored rows (compiled modules stay, keyed by their source)."""
        self._router = None
        self._scripts.clear()
        self._stamp = None
        self.disabled = crashes.disabled(self.tenant.conn)

    def is_disabled(self, label: str) -> bool:
        """True if the script is disabled for crashing its worker (asked again of the file for one
        we have as disabled: it may have been saved since)."""
        if label not in self.disabled:
            return False
        n = crashes.disabled(self.tenant.conn).get(label)
        if n is None:
            self.disabled.pop(label, None)
            return False
        self.disabled[label] = n
        return True

    def refuse_if_disabled(self, label: str) -> None:
        """Unavailable (503) if the script is disabled for crashing its worker."""
        if self.is_disabled(label):
            raise crashes.refusal(label, self.disabled[label])

    def _refresh(self) -> None:
        """Drop what a write to `_wce_scripts` (by this connection or another) may have changed."""
        stamp = self.tenant.bus.version("_wce_scripts")
        if stamp != self._stamp:
            self.invalidate()
            self._stamp = stamp

    def tables_read(self, sql: str) -> frozenset[str]:
        """The tables a query reads (through views too), cached per schema generation: finding out
        prepares the statement once more, under the guard."""
        key = (self.tenant.access.generation, sql)
        got = self._reads.get(key)
        if got is None:
            try:
                got = sqlguard.tables_read(self.tenant.conn, sql)
            except apsw.Error:
                got = frozenset()
            if len(self._reads) > 1000:
                self._reads.clear()
            self._reads[key] = got
        return got

    def run_context(self, page: Any, role: str) -> tuple[dict[str, Any], frozenset[str]]:
        """A page's `context(ctx)`, run with the reach of the role the page renders with; what it
        returned (a dict) and the tables it read. Writes are rolled back: rendering changes nothing."""
        t = self.tenant
        key = -int(page.id)  # page contexts share the compiled cache with scripts, under negative ids
        got = self._compiled.get(key)
        label = f"page:{page.id}"
        if got is None or got[0] != page.updated_at:
            self.refuse_if_disabled(label)
            got = (page.updated_at, _compile(page.context, "context", f"page{page.id}.star", label))
            self._compiled[key] = got
        host = ScriptHost(t, Actor(None, None, role), None, label, track_reads=True)
        raw = {"method": "GET", "path": page.path, "params": {}, "query": {}, "headers": {}, "body": "",
               "json": None, "user": None}
        try:
            value, _ = execute(t, got[1], raw, host, commit=False)
        except WceError as exc:
            exc.read_tables = frozenset(host.reads)  # type: ignore[attr-defined]
            raise
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise runtime.ScriptFailed("context(ctx) must return a dict with string keys")
        return value, frozenset(host.reads)

    def _routes(self) -> EndpointRouter:
        if self._router is None:
            rows = self.tenant.conn.execute(
                "SELECT id, method, path FROM _wce_scripts WHERE kind = 'endpoint'").fetchall()
            self._router = EndpointRouter([(r[0], r[1], r[2]) for r in rows])
        return self._router

    def router(self) -> EndpointRouter:
        """The endpoint routing table, as the scripts stand now."""
        self._refresh()
        return self._routes()

    def endpoint(self, method: str, path: str) -> tuple[tuple[dict[str, Any], runtime.Compiled] | None,
                                                        dict[str, str], set[str]]:
        """The endpoint a request goes to, with one look at the scripts' version: (its stored
        script and compiled form, or None; the path parameters; the methods the path allows)."""
        self._refresh()
        sid, params, allowed = self._routes().match(method, path)
        return (None if sid is None else self._script(sid)), params, allowed

    def compiled(self, script_id: int) -> tuple[dict[str, Any], runtime.Compiled]:
        """A stored script and its compiled form (compiled once per source)."""
        self._refresh()
        return self._script(script_id)

    def _script(self, script_id: int) -> tuple[dict[str, Any], runtime.Compiled]:
        got = self._scripts.get(script_id)
        if got is not None:
            return got
        row = self.tenant.conn.execute(
            "SELECT kind, source, access, path, method, tables FROM _wce_scripts WHERE id = ?",
            (script_id,)).fetchone()
        if row is None:
            raise NotFound("no such script")
        kind, source, access, path, method, tables = row
        module = self._modules.get(script_id)
        if module is None or module[0] != kind or module[1] != source:
            label = f"{kind}:{script_id}"
            self.refuse_if_disabled(label)
            module = (kind, source, _compile(source, kind, f"{kind}{script_id}.star", label))
            if len(self._modules) >= MAX_MODULES:
                self._modules.clear()
            self._modules[script_id] = module
        info = {"id": script_id, "kind": kind, "access": access, "path": path, "method": method,
                "tables": json.loads(tables) if tables else []}
        got = self._scripts[script_id] = (info, module[2])
        return got


def _compile(source: str, kind: str, filename: str, label: str) -> runtime.Compiled:
    """Compile in this worker, under the crash marker: the top level is tenant code too."""
    marked = crash_marker.running(label)
    try:
        return runtime.compile_script(source, kind, filename)
    finally:
        crash_marker.done(marked)
