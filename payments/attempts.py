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
Calls made while that thread is busy are queued and then run together in one
transaction: one commit (one fsync of the WAL) and one thread hand-off
for the whole group, not for every call. At hundreds of payments per second (each writes
its row two or three times) per-call commits kept the thread busy and queued every
payment behind it; a call still returns only once its own write is durable.
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
MAX_GROUP = 1_000  # calls committed together in one transaction

_Work = Callable[[sqlite3.Connection], Any]


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
        self._queued: list[tuple[_Work, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued.append((work, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="attempts-flush")
        return await future

    async def _flush(self) -> None:
        """Hand the queued calls to the store's thread, a group at a time, until none wait."""
        loop = asyncio.get_running_loop()
        while self._queued:
            group = self._queued[:MAX_GROUP]
            del self._queued[:MAX_GROUP]
            try:
                outcomes = await loop.run_in_executor(
                    self._pool, self._call_group, [work for work, _ in group]
                )
            except BaseException as exc:
                # The transaction failed as a whole (or the loop is going down).
                outcomes = [(False, exc)] * len(group)
                if not isinstance(exc, Exception):
                    for _, future in group:
                        future.cancel()
                    raise
            for (_, future), (ok, value) in zip(group, outcomes, strict=True):
                if future.done():
                    continue  # its caller was cancelled; the write happened anyway
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an attempt row survives a power cut
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _call_group(self, works: list[_Work]) -> list[tuple[bool, Any]]:
        """Run ``works`` in one transaction: one commit makes them all durable. When one
        raises, the transaction is rolled back and each runs again in one of its own, so
        only the failing call fails (every call is one statement, safe to run again)."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes: list[tuple[bool, Any]] = [(True, work(db)) for work in works]
            db.execute("COMMIT")
        except Exception:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if len(works) == 1:
                raise
            return [self._call_alone(db, work) for work in works]
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _call_alone(db: sqlite3.Connection, work: _Work) -> tuple[bool, Any]:
        try:
            return True, work(db)
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return False, exc

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        """Finish the queued calls, then close the database and the thread."""
        if self._flusher is not None and not self._flusher.done():
            await self._flusher

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
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
