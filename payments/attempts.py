"""Durable payment attempts: a small SQLite table per gateway under its data directory.

Theory of operation: before a provider is asked to charge, the attempt is written here
(state ``charging``), so a crash or a timeout mid-charge leaves a row the reconciler
finds. Each answer moves the row on:

    charging -> succeeded | declined      the provider answered; not yet in the ledger
             -> unknown                   timed out / ambiguous: ask the provider later
             -> not_charged               the provider certainly did nothing (failed over)
    succeeded | declined -> recorded      the ledger holds the outcome
    succeeded -> refund_due -> refunded   the order expired or was paid by another charge
    unknown  -> void                      the provider never saw it (given up)

Why per-gateway SQLite and not the ledger: an attempt is written before every charge,
at payment rate, and most never matter; putting them through Raft would double the
write load of the hottest path for a record only the charging gateway needs. What must
be shared (the outcome) goes to the ledger; webhooks reach any gateway and settle
through the ledger too. The cost: a gateway's unknown attempts wait for that gateway
(its data dir) to come back; webhooks usually settle them first.

All SQLite work runs on one dedicated thread so the event loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RETENTION_MS = 7 * 24 * 3600 * 1000  # finished attempts are deleted after a week
MAX_UNRESOLVED_PER_PASS = 200  # rows one reconciler pass looks at


class AttemptState(StrEnum):
    CHARGING = "charging"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    UNKNOWN = "unknown"
    NOT_CHARGED = "not_charged"
    RECORDED = "recorded"
    REFUND_DUE = "refund_due"
    REFUNDED = "refunded"
    VOID = "void"


# States a reconciler pass works on (CHARGING only once its charge must have ended).
OPEN_STATES = (
    AttemptState.UNKNOWN,
    AttemptState.SUCCEEDED,
    AttemptState.DECLINED,
    AttemptState.REFUND_DUE,
)
FINISHED_STATES = (
    AttemptState.NOT_CHARGED,
    AttemptState.RECORDED,
    AttemptState.REFUNDED,
    AttemptState.VOID,
)


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt_id: str  # "<idempotency key>@<provider>"
    order_id: str
    user_id: str
    attempt_no: int
    provider: str
    idempotency_key: str
    amount_minor: int
    currency: str
    state: AttemptState
    transaction_id: str
    decline_code: str
    created_ms: int
    updated_ms: int
    checks: int


def attempt_id(idempotency_key: str, provider: str) -> str:
    return f"{idempotency_key}@{provider}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    attempt_id      TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    attempt_no      INTEGER NOT NULL,
    provider        TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    amount_minor    INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    state           TEXT NOT NULL,
    transaction_id  TEXT NOT NULL DEFAULT '',
    decline_code    TEXT NOT NULL DEFAULT '',
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    checks          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS attempts_state ON attempts (state, updated_ms);
CREATE INDEX IF NOT EXISTS attempts_order ON attempts (order_id);
"""
_COLUMNS = (
    "attempt_id, order_id, user_id, attempt_no, provider, idempotency_key, amount_minor, "
    "currency, state, transaction_id, decline_code, created_ms, updated_ms, checks"
)


def _row(row: tuple[Any, ...]) -> Attempt:
    values = list(row)
    values[8] = AttemptState(values[8])
    return Attempt(*values)


class AttemptStore:
    """The attempts table; every method runs its SQL on the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attempts")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an attempt row survives a power cut
            db.executescript(_SCHEMA)
            self._db = db
        return work(self._db)

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._run(shut)
        self._pool.shutdown(wait=True)

    async def begin(
        self,
        *,
        order_id: str,
        user_id: str,
        attempt_no: int,
        provider: str,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        now_ms: int,
    ) -> None:
        """Write the attempt as ``charging`` (again, if an earlier try did not charge)."""
        aid = attempt_id(idempotency_key, provider)

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO attempts ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,'','',?,?,0) "
                "ON CONFLICT (attempt_id) DO UPDATE SET state = excluded.state, "
                "updated_ms = excluded.updated_ms WHERE state IN (?, ?)",
                (aid, order_id, user_id, attempt_no, provider, idempotency_key, amount_minor,
                 currency, AttemptState.CHARGING, now_ms, now_ms,
                 AttemptState.NOT_CHARGED, AttemptState.VOID),
            )

        await self._run(work)

    async def update(
        self,
        aid: str,
        state: AttemptState,
        now_ms: int,
        *,
        transaction_id: str | None = None,
        decline_code: str | None = None,
        checked: bool = False,
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE attempts SET state = ?, updated_ms = ?, "
                "transaction_id = COALESCE(?, transaction_id), "
                "decline_code = COALESCE(?, decline_code), checks = checks + ? "
                "WHERE attempt_id = ?",
                (state, now_ms, transaction_id, decline_code, 1 if checked else 0, aid),
            )

        await self._run(work)

    async def get(self, aid: str) -> Attempt | None:
        def work(db: sqlite3.Connection) -> Attempt | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM attempts WHERE attempt_id = ?", (aid,)
            ).fetchone()
            return None if row is None else _row(row)

        return await self._run(work)

    async def of_order(self, order_id: str) -> list[Attempt]:
        def work(db: sqlite3.Connection) -> list[Attempt]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM attempts WHERE order_id = ? ORDER BY created_ms",
                (order_id,),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._run(work)

    async def open_attempts(
        self, *, charging_before_ms: int, limit: int = MAX_UNRESOLVED_PER_PASS
    ) -> list[Attempt]:
        """Attempts the reconciler must settle, least recently looked at first."""
        states = tuple(str(s) for s in OPEN_STATES)

        def work(db: sqlite3.Connection) -> list[Attempt]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM attempts WHERE state IN (?,?,?,?) "
                "OR (state = ? AND updated_ms < ?) ORDER BY updated_ms LIMIT ?",
                (*states, AttemptState.CHARGING, charging_before_ms, limit),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._run(work)

    async def prune(self, now_ms: int) -> int:
        """Delete finished attempts older than RETENTION_MS; how many went."""
        states = tuple(str(s) for s in FINISHED_STATES)

        def work(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "DELETE FROM attempts WHERE state IN (?,?,?,?) AND updated_ms < ?",
                (*states, now_ms - RETENTION_MS),
            )
            return cur.rowcount

        return await self._run(work)
