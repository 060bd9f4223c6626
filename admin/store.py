"""The console's own database: operators, sessions, the audit log and the operators' bot
defence settings (admin.bots_store) in one SQLite file.

Theory of operation: the file lives at ``<data_dir>/admin.db`` (mode 0600: it holds
password hashes). ``open_store`` applies, in order and each in its own transaction, every
migration whose number is above the file's ``PRAGMA user_version``, so a console started
on an older file upgrades it and one started on a newer file refuses to run. The
connection is used from the event loop only: every statement is a small indexed read or
write, and WAL mode keeps readers from waiting on the writer.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

ADMIN_DB_NAME = "admin.db"

# Versioned schema: entry i brings the file from version i to version i + 1. Never edit an
# entry that has shipped; append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE operators (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        rights TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        operator_id INTEGER NOT NULL REFERENCES operators(id) ON DELETE CASCADE,
        csrf_token TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        ip TEXT NOT NULL,
        flash TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_by_operator ON sessions(operator_id, created_at_ms);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        operator TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        details TEXT NOT NULL,
        ip TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit(at_ms);
    """,
    # 2: what operators set for the gateways' bot defences (admin.bots_store).
    """
    CREATE TABLE bot_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        set_at_ms INTEGER NOT NULL,
        set_by TEXT NOT NULL
    );
    CREATE TABLE bot_entries (
        list TEXT NOT NULL,
        value TEXT NOT NULL,
        present INTEGER NOT NULL,
        changed_at_ms INTEGER NOT NULL,
        changed_by TEXT NOT NULL,
        PRIMARY KEY (list, value)
    );
    CREATE INDEX bot_entries_by_age ON bot_entries(list, present, changed_at_ms);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The console database cannot be used (for example, it is newer than this code)."""


def admin_db_path(data_dir: Path) -> Path:
    return data_dir / ADMIN_DB_NAME


def open_store(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the console database at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Create it private before SQLite writes any hash into it.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    migrate(conn)
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection) -> None:
    """Apply every migration above the file's version, each atomically."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"admin database schema version {version} is newer than this console "
            f"({SCHEMA_VERSION}); upgrade flashsale"
        )
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
