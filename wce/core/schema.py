"""The `_wce_` tables of a cenv file, and the migrations that bring an older file up to date.

The schema version is SQLite's `user_version`; `application_id` marks the file as a WCE cenv.
A migration is a list of SQL statements run in one transaction with the version bump, so a file
is always at exactly one version.
"""

from __future__ import annotations

import apsw

APPLICATION_ID = 0x57434531  # "WCE1"

MIGRATIONS: list[str] = [
    # 1: the foundation
    """
    CREATE TABLE _wce_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE _wce_users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE _wce_sessions (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES _wce_users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        revoked_at REAL,
        ip TEXT,
        user_agent TEXT
    ) WITHOUT ROWID;
    CREATE INDEX _wce_sessions_user ON _wce_sessions(user_id);
    CREATE TABLE _wce_table_permissions (
        table_name TEXT NOT NULL,
        role TEXT NOT NULL,
        can_select INTEGER NOT NULL DEFAULT 0,
        can_insert INTEGER NOT NULL DEFAULT 0,
        can_update INTEGER NOT NULL DEFAULT 0,
        can_delete INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (table_name, role)
    ) WITHOUT ROWID;
    CREATE TABLE _wce_row_policies (
        id INTEGER PRIMARY KEY,
        table_name TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('select', 'insert', 'update', 'delete', 'all')),
        using_expr TEXT,
        check_expr TEXT
    );
    CREATE INDEX _wce_row_policies_table ON _wce_row_policies(table_name, role);
    CREATE TABLE _wce_config (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE _wce_audit_log (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        actor TEXT,
        action TEXT NOT NULL,
        target TEXT,
        detail TEXT,
        ip TEXT
    );
    CREATE TABLE _wce_pages (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        template TEXT NOT NULL,
        queries TEXT NOT NULL DEFAULT '{}',
        context TEXT,
        access TEXT NOT NULL DEFAULT 'public' CHECK (access IN ('public', 'user', 'admin')),
        content_type TEXT NOT NULL DEFAULT 'text/html',
        updated_at REAL NOT NULL
    );
    CREATE TABLE _wce_templates (
        name TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE _wce_values (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE _wce_scripts (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('endpoint', 'trigger')),
        name TEXT,
        method TEXT,
        path TEXT,
        tables TEXT,
        source TEXT NOT NULL,
        access TEXT NOT NULL DEFAULT 'admin' CHECK (access IN ('public', 'user', 'admin')),
        spec TEXT,
        updated_at REAL NOT NULL
    );
    CREATE TABLE _wce_render_cache (
        page_id INTEGER PRIMARY KEY REFERENCES _wce_pages(id) ON DELETE CASCADE,
        body BLOB,
        etag TEXT,
        content_type TEXT,
        read_tables TEXT,
        rendered_at REAL,
        error TEXT
    );
    """,
    # 2: what scripts printed, kept small (the newest rows), for the owner to read
    """
    CREATE TABLE _wce_script_log (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        script_id INTEGER,
        kind TEXT NOT NULL,
        line TEXT NOT NULL
    );
    """,
    # 3: the operator's per-cenv exceptions to the server's resource ceilings (`wce caps`); no
    # tenant route writes here, the SQL guard denies it to tenant SQL, an import empties it
    """
    CREATE TABLE _wce_caps (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 4: failed logins per client address ('ip') and per username ('user'), kept in the file so
    # that the login throttle outlives the worker (idle exit, crash); rows past the window go
    """
    CREATE TABLE _wce_login_failures (
        kind TEXT NOT NULL CHECK (kind IN ('ip', 'user')),
        key TEXT NOT NULL,
        ts REAL NOT NULL
    );
    CREATE INDEX _wce_login_failures_key ON _wce_login_failures(kind, key, ts);
    CREATE INDEX _wce_login_failures_ts ON _wce_login_failures(ts);
    """,
    # 5: scripts that crashed their worker (wce.core.scripts.crashes): each crash, by script label
    # (endpoint:ID, trigger:ID, page:ID) and the signal that ended the worker (0: it hit the memory
    # cap and retired), rows past the window deleted as new ones come; and the scripts disabled for it
    """
    CREATE TABLE _wce_script_crashes (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        script TEXT NOT NULL,
        signal INTEGER NOT NULL
    );
    CREATE INDEX _wce_script_crashes_script ON _wce_script_crashes(script, ts);
    CREATE TABLE _wce_script_disabled (
        script TEXT PRIMARY KEY,
        disabled_at REAL NOT NULL,
        crashes INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

TABLES = (
    "_wce_meta", "_wce_users", "_wce_sessions", "_wce_table_permissions", "_wce_row_policies",
    "_wce_config", "_wce_audit_log", "_wce_pages", "_wce_templates", "_wce_values", "_wce_scripts",
    "_wce_render_cache", "_wce_script_log", "_wce_caps", "_wce_login_failures",
    "_wce_script_crashes", "_wce_script_disabled",
)


class SchemaTooNew(Exception):
    """The file was written by a newer WCE than this one; it is left untouched."""


def version(conn: apsw.Connection) -> int:
    """The file's schema version (0 for an empty file)."""
    return int(conn.pragma("user_version"))


def migrate(conn: apsw.Connection) -> int:
    """Bring the file to SCHEMA_VERSION, one migration per transaction; return the new version."""
    current = version(conn)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(f"schema version {current} is newer than this server's {SCHEMA_VERSION}")
    for target in range(current + 1, SCHEMA_VERSION + 1):
        with conn:
            conn.execute(MIGRATIONS[target - 1])
            conn.pragma("user_version", target)
            conn.pragma("application_id", APPLICATION_ID)
    return SCHEMA_VERSION
