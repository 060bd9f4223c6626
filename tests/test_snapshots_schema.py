"""Versioned migrations: applied once, in order, at start; safe to run again and from
several processes at once; a database newer than the code is refused."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshots.database import open_database
from snapshots.schema import MIGRATIONS_DIR, SchemaError, load_migrations, migrate, schema_version
from snapshots.store import SnapshotStore
from tests.support.stores import STORE_KINDS, store_url

TABLES = {
    "applied_index",
    "inventory",
    "orders",
    "order_lines",
    "cart",
    "payment",
    "stock_moves",
    "data_keys",
    "erasures",
    "schema_version",
}


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as u:
        yield u


def tables(url: str) -> set[str]:
    db = open_database(url)
    try:
        if db.dialect == "sqlite":
            found = db.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            found = db.query(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        return {str(r[0]) for r in found} - {"sqlite_sequence"}
    finally:
        db.close()


def test_both_dialects_have_the_same_versions() -> None:
    sqlite = load_migrations("sqlite")
    postgres = load_migrations("postgresql")
    assert [(m.version, m.name) for m in sqlite] == [(m.version, m.name) for m in postgres]


def test_a_new_database_gets_every_table_and_a_second_run_changes_nothing(url: str) -> None:
    db = open_database(url)
    try:
        latest = load_migrations(db.dialect)[-1].version
        assert migrate(db) == list(range(1, latest + 1))
        assert schema_version(db) == latest
        assert migrate(db) == []  # idempotent
        assert schema_version(db) == latest
        assert db.query("SELECT ledger_index FROM applied_index") == [(0,)]
    finally:
        db.close()
    assert tables(url) == TABLES


def test_a_newer_migration_file_is_applied_to_an_existing_database(
    url: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    db = open_database(url)
    try:
        migrate(db, migrations)
        db.execute_script(
            "INSERT INTO erasures (user_id, key_id, erased_at_ms) VALUES ('u', '', 1)"
        )
        for dialect in ("sqlite", "postgresql"):
            (migrations / dialect / "0002_notes.sql").write_text(
                "-- a later version adds a table\n"
                "CREATE TABLE notes (note_id TEXT PRIMARY KEY, body TEXT NOT NULL);\n"
                "CREATE INDEX notes_by_body ON notes (body);\n"
            )
        assert migrate(db, migrations) == [2]
        assert migrate(db, migrations) == []
        assert db.query("SELECT COUNT(*) FROM erasures") == [(1,)]  # data kept
        assert db.query("SELECT version, name FROM schema_version ORDER BY version") == [
            (1, "initial"),
            (2, "notes"),
        ]
    finally:
        db.close()
    assert tables(url) == TABLES | {"notes"}


def test_a_database_newer_than_the_code_is_refused(url: str, tmp_path: Path) -> None:
    db = open_database(url)
    try:
        migrate(db)
        db.execute_script(
            "INSERT INTO schema_version (version, name, applied_at_ms) VALUES (99, 'future', 0)"
        )
        with pytest.raises(SchemaError, match="schema version 99, newer than this code"):
            migrate(db)
    finally:
        db.close()
    with pytest.raises(SchemaError, match="upgrade flashsale"):
        SnapshotStore.open(url)


def test_a_missing_migration_number_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "sqlite"
    folder.mkdir()
    (folder / "0001_initial.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (folder / "0003_later.sql").write_text("CREATE TABLE b (x INTEGER);\n")
    with pytest.raises(SchemaError, match="migration 2 is missing"):
        load_migrations("sqlite", tmp_path)
    (folder / "0002_bad name.sql").write_text("")
    with pytest.raises(SchemaError, match=r"NNNN_name\.sql"):
        load_migrations("sqlite", tmp_path)


def test_processes_starting_together_apply_each_version_once(url: str) -> None:
    applied: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=30)  # one failing to open must not hang the rest

    def start() -> None:
        db = open_database(url)
        try:
            barrier.wait()
            applied.append(migrate(db))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(applied) == [[], [], [], [1]]
