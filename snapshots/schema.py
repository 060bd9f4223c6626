"""Versioned schema migrations, applied at start by every process that opens the store.

Theory of operation: ``snapshots/migrations/<dialect>/NNNN_name.sql`` are the versions,
numbered 1, 2, 3... without gaps; a shipped file is never edited, a change is a new file.
``migrate`` takes the database's write lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL an
advisory lock on the schema's name), reads ``schema_version``, applies every newer file
and records it, all in one transaction: two processes starting together apply each
version once, and a crash midway leaves the previous version intact. A database whose
version is newer than this code's files is refused, rather than written with an old idea
of its tables.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from snapshots.database import Database, Dialect, Tx

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)


class SchemaError(RuntimeError):
    """The migrations or the database's schema version are not usable."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _statements(sql: str) -> tuple[str, ...]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    parts = _STATEMENT_END.split("\n".join(lines))
    return tuple(part.strip() for part in parts if part.strip())


def load_migrations(dialect: Dialect, directory: Path | None = None) -> list[Migration]:
    """The migrations of ``dialect``, in version order (SchemaError on a gap)."""
    folder = (directory or MIGRATIONS_DIR) / dialect
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise SchemaError(f"{path}: migration files are named NNNN_name.sql")
        found.append(
            Migration(int(match[1]), match[2], _statements(path.read_text(encoding="utf-8")))
        )
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise SchemaError(
                f"{folder}: migration {expected} is missing (found {migration.version})"
            )
    if not found:
        raise SchemaError(f"{folder}: no migration files")
    return found


def _lock(tx: Tx, dialect: Dialect) -> None:
    if dialect == "postgresql":
        # Serialises migrators of this schema; SQLite's BEGIN IMMEDIATE already did.
        tx.query("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")


def schema_version(db: Database) -> int:
    """The version the database is at (0 before the first migration)."""
    with db.transaction() as tx:
        return _current(tx)


def _current(tx: Tx) -> int:
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)"
    )
    rows = tx.query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(rows[0][0])


def migrate(db: Database, directory: Path | None = None) -> list[int]:
    """Bring the database to the newest version; the versions applied now (often none)."""
    migrations = load_migrations(db.dialect, directory)
    latest = migrations[-1].version
    with db.transaction() as tx:
        _lock(tx, db.dialect)
        current = _current(tx)
        if current > latest:
            raise SchemaError(
                f"the database is at schema version {current}, newer than this code's "
                f"{latest}: upgrade flashsale before starting it on this database"
            )
        applied: list[int] = []
        now_ms = time.time_ns() // 1_000_000
        for migration in migrations[current:]:
            for statement in migration.statements:
                tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_version (version, name, applied_at_ms) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_ms),
            )
            applied.append(migration.version)
    return applied
