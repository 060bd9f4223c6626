"""One small interface over SQLite (stdlib ``sqlite3``) and PostgreSQL (``psycopg`` 3).

Theory of operation: the snapshot store and the data-key store speak plain SQL with ``?``
placeholders; ``open_database(url)`` picks the dialect from the URL
(``sqlite:///path`` or ``postgresql://...``) and a PostgreSQL connection rewrites ``?``
to ``%s`` (our SQL never holds a literal ``?`` or ``%``). Work happens in explicit
transactions (``with db.transaction() as tx``): commit when the block ends, roll back
when it raises. Connections are in autocommit mode outside them, so a reader never holds
a snapshot open by accident.

SQLite runs in WAL mode (readers never block the writer) with a busy timeout, so the
writer process, the gateways (data keys) and the CLI can share one file. Transactions
take the write lock at BEGIN (``BEGIN IMMEDIATE``): a read-then-write never meets a
"database is locked" halfway. ``durable=False`` (the snapshot writer) uses SQLite's
``synchronous=NORMAL`` and PostgreSQL's ``synchronous_commit = off``: a crash of the
machine may lose the last commits, which is safe because the applied ledger index rolls
back with the rows and the writer fetches those events again, and it spares a disk flush
per batch. Data keys are opened ``durable=True`` (``synchronous=FULL``, a flushed commit)
and, on SQLite, with ``secure_delete``, so a destroyed key is overwritten rather than
left in a free page.

A connection is used by one thread at a time (the writer hands it to a worker thread).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg

Dialect = Literal["sqlite", "postgresql"]
Params = Sequence[Any]
BUSY_TIMEOUT_MS = 10_000  # SQLite: wait this long for another process's write lock
WAL_RETRY_S = 0.01  # SQLite: pause between tries to switch a new database to WAL
CONNECT_TIMEOUT_S = 10  # PostgreSQL: give up connecting after this

DatabaseError = (sqlite3.Error, psycopg.Error)  # what a store operation may raise


class StoreUrlError(ValueError):
    """storage.url names no database this code can open."""


def dialect_of(url: str) -> Dialect:
    if url.startswith("sqlite:"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    raise StoreUrlError(f"storage.url={url!r}: expected sqlite:///path or postgresql://...")


class Tx(Protocol):
    """The statements of one transaction."""

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Sequence[Params]) -> int:
        """Run one statement per row; the number of rows changed in all."""
        ...

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]: ...


class Database(Protocol):
    dialect: Dialect

    def transaction(self) -> AbstractContextManager[Tx]:
        """A context manager yielding a ``Tx``: commit at the end, rollback on error."""
        ...

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """A read outside any explicit transaction."""
        ...

    def execute_script(self, sql: str) -> None:
        """Maintenance statements outside any transaction (VACUUM, checkpoints)."""
        ...

    def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> int:
        return self._conn.executemany(sql, rows).rowcount if rows else 0

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, params).fetchall())


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, retrying while another connection holds the lock: SQLite answers
    "database is locked" at once here, without its busy handler, when several processes
    open a new database together (seen with four writers starting at once)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_RETRY_S)


class SqliteDatabase:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, durable: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Private from the first byte: it holds wrapped keys and sealed personal data.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        c = self._conn
        c.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _set_wal(c)
        c.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        if durable:
            c.execute("PRAGMA secure_delete=ON")

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def execute_script(self, sql: str) -> None:
        with self._lock:
            self._conn.execute(sql)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_PLACEHOLDER = re.compile(r"\?")


class _PgTx:
    def __init__(self, conn: psycopg.Connection[Any], convert: Any) -> None:
        self._cur = conn.cursor()
        self._convert = convert

    def execute(self, sql: str, params: Params = ()) -> int:
        self._cur.execute(self._convert(sql), params)
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        self._cur.executemany(self._convert(sql), rows)
        return self._cur.rowcount

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(self._convert(sql), params)
        return list(self._cur.fetchall())


class PostgresDatabase:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, durable: bool) -> None:
        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        self._lock = threading.Lock()
        self._sql: dict[str, str] = {}
        if not durable:
            self._conn.execute("SET synchronous_commit = off")

    def _convert(self, sql: str) -> str:
        converted = self._sql.get(sql)
        if converted is None:
            converted = self._sql[sql] = _PLACEHOLDER.sub("%s", sql)
        return converted

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock, self._conn.transaction():
            yield _PgTx(self._conn, self._convert)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(self._convert(sql), params).fetchall())

    def execute_script(self, sql: str) -> None:
        with self._lock:
            self._conn.execute(sql)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_database(url: str, *, durable: bool = True) -> SqliteDatabase | PostgresDatabase:
    """Connect to the database of ``url`` (no schema work: see ``snapshots.migrations``)."""
    if dialect_of(url) == "sqlite":
        # sqlite:////abs/path (what cluster.config resolves to) or sqlite:///relative/path.
        return SqliteDatabase(Path(url.removeprefix("sqlite:///")), durable=durable)
    return PostgresDatabase(url, durable=durable)
