"""The snapshot store: feed pages applied exactly once, in one transaction each.

Theory of operation: ``apply_page`` opens a transaction, locks and reads the applied
ledger index, folds the page's events above it into row changes
(``snapshots.projection``), writes them, and moves the applied index to the page's
``last_index``, then commits. Rows and index commit together or not at all, so a writer
killed at any instant restarts from the last committed index: events at or below it are
skipped (none applied twice), the ones above it are fetched again (none lost). Two
writers on one store serialise on the lock and still apply each event once.

A page may carry a ledger snapshot (the writer fell behind the feed's retention): the
store then rebuilds in the same transaction: rows of the snapshot are upserted, holds it
no longer lists as active are closed (released, or 'ended' when the snapshot cannot tell
released from expired), the stock journal gets one adjustment per product and bucket so
its sums match the snapshot's levels, and the page's events follow.

Rows go out in few statements: on PostgreSQL one per table and kind, each column sent as
one array (``unnest``); on SQLite multi-row ``VALUES`` and ``executemany``, in process.

A page must start at or below the applied index (``from_index``); a page from further
ahead would leave a gap, and is refused with ``GapError``.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snapshots.database import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
    Tx,
    open_database,
)
from snapshots.projection import (
    SNAPSHOT_SEQ,
    TABLE_KEYS,
    Changes,
    Key,
    Row,
    SnapshotState,
    decode_snapshot,
    project_events,
    project_snapshot,
)
from snapshots.schema import migrate

BUCKETS = ("available", "reserved", "sold")
MAX_PARAMETERS = 30_000  # per SQLite statement (it allows 32766)
MAX_ROWS_PER_STATEMENT = 1_000  # rows of one SQLite multi-row INSERT


class GapError(RuntimeError):
    """A page starts after the applied index: applying it would skip events."""


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One answer of ``GET /v1/feed``."""

    events: Sequence[Mapping[str, Any]]
    last_index: int
    snapshot: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What one ``apply_page`` did."""

    before_index: int  # applied index when the transaction began
    index: int  # applied index now
    at_ms: int  # ledger time of the applied index
    events: int  # events applied (the skipped ones not counted)
    rows: int  # rows written (merged per row)
    rebuilt_from: int | None  # the snapshot index rebuilt from, if any
    missing_rows: int  # patches that found no row (the store did not know the record)
    unsealed_dropped: int  # personal data dropped because it was not sealed


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SnapshotStore:
    """The tables of one database, written by the snapshot writer."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock_suffix = " FOR UPDATE" if db.dialect == "postgresql" else ""
        # PostgreSQL: column types, to send a batch as one array per column (unnest).
        self._types: dict[str, dict[str, str]] | None = None
        if db.dialect == "postgresql":
            self._types = {}
            for table, column, udt in db.query(
                "SELECT table_name, column_name, udt_name FROM information_schema.columns "
                "WHERE table_schema = current_schema()"
            ):
                self._types.setdefault(str(table), {})[str(column)] = str(udt)

    @classmethod
    def open(cls, url: str) -> SnapshotStore:
        """Connect to ``url`` and migrate it to the newest schema."""
        db: SqliteDatabase | PostgresDatabase = open_database(url, durable=False)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        return cls(db)

    def close(self) -> None:
        self.db.close()

    def applied_index(self) -> int:
        return int(self.db.query("SELECT ledger_index FROM applied_index WHERE id = 1")[0][0])

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row the writer owns, sorted (to compare two stores, or a store with
        itself before and after something)."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table, keys in TABLE_KEYS.items():
            rows = self.db.query(f"SELECT * FROM {table} ORDER BY {', '.join(keys)}")
            out[table] = [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows
            ]
        out["applied_index"] = self.db.query(
            "SELECT ledger_index, at_ms, rebuilt_from_index FROM applied_index"
        )
        return out

    # -- writing ----------------------------------------------------------------------

    def apply_page(self, page: FeedPage, from_index: int, now_ms: int | None = None) -> Applied:
        """Apply a page fetched with ``from=from_index``, exactly once (module doc)."""
        wall_ms = _now_ms() if now_ms is None else now_ms
        with self.db.transaction() as tx:
            row = tx.query(
                "SELECT ledger_index, at_ms FROM applied_index WHERE id = 1" + self._lock_suffix
            )
            before, at_ms = int(row[0][0]), int(row[0][1])
            if from_index > before:
                raise GapError(
                    f"the page starts after ledger index {from_index}, but the store has "
                    f"applied only up to {before}: refetch from {before}"
                )
            applied = before
            rows = missing = dropped = 0
            rebuilt: int | None = None
            if page.snapshot is not None:
                state = decode_snapshot(page.snapshot)
                if state.index > applied:
                    rows, missing, dropped = self._rebuild(tx, state)
                    applied, at_ms, rebuilt = state.index, state.at_ms, state.index
            changes = project_events(page.events, applied)
            written, missed = self._write(tx, changes)
            rows += written
            missing += missed
            dropped += changes.unsealed_dropped
            if changes.events:
                at_ms = max(at_ms, changes.last_at_ms)
            target = max(applied, page.last_index, changes.last_index)
            if target > before:
                tx.execute(
                    "UPDATE applied_index SET ledger_index = ?, at_ms = ?, updated_at_ms = ?"
                    + (", rebuilt_from_index = ?" if rebuilt is not None else "")
                    + " WHERE id = 1",
                    (target, at_ms, wall_ms, *(() if rebuilt is None else (rebuilt,))),
                )
        return Applied(
            before_index=before,
            index=max(before, target),
            at_ms=at_ms,
            events=changes.events,
            rows=rows,
            rebuilt_from=rebuilt,
            missing_rows=missing,
            unsealed_dropped=dropped,
        )

    def _write(self, tx: Tx, changes: Changes) -> tuple[int, int]:
        """Write ``changes``; (rows written, patches that found no row)."""
        written = missing = 0
        for table, rows in changes.whole.items():
            keys = TABLE_KEYS[table]
            for columns, group in _by_columns(rows).items():
                update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
                self._insert(tx, table, columns, group, f"DO UPDATE SET {update}")
                written += len(group)
        for table, rows in changes.patches.items():
            for columns, group in _by_columns(rows).items():
                changed = self._update(tx, table, columns, group)
                written += changed
                missing += len(group) - changed
        if changes.moves:
            columns = tuple(changes.moves[0])
            self._insert(tx, "stock_moves", columns, changes.moves, "DO NOTHING")
            written += len(changes.moves)
        return written, missing

    def _insert(
        self, tx: Tx, table: str, columns: tuple[str, ...], rows: Sequence[Row], on_conflict: str
    ) -> None:
        conflict = f"ON CONFLICT ({', '.join(TABLE_KEYS[table])}) {on_conflict}"
        if self._types is not None:
            # One statement per batch, one array per column: the query text stays small
            # and the same, whatever the number of rows.
            arrays = ", ".join(f"?::{self._types[table][c]}[]" for c in columns)
            tx.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
                + conflict,
                _column_lists(rows, columns),
            )
            return
        # SQLite: multi-row VALUES, a chunk per statement.
        chunk = max(1, min(MAX_ROWS_PER_STATEMENT, MAX_PARAMETERS // len(columns)))
        one = f"({', '.join('?' for _ in columns)})"
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            tx.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"{', '.join(one for _ in part)} {conflict}",
                [v for r in part for v in _values(r, columns)],
            )

    def _update(self, tx: Tx, table: str, columns: tuple[str, ...], rows: Sequence[Row]) -> int:
        """UPDATE existing rows with the non-key ``columns`` of ``rows``; rows changed."""
        keys = TABLE_KEYS[table]
        sets = tuple(c for c in columns if c not in keys)
        if self._types is not None:
            names = sets + keys
            arrays = ", ".join(f"?::{self._types[table][c]}[]" for c in names)
            return tx.execute(
                f"UPDATE {table} AS t SET {', '.join(f'{c} = v.{c}' for c in sets)} "
                f"FROM unnest({arrays}) AS v({', '.join(names)}) "
                f"WHERE {' AND '.join(f't.{k} = v.{k}' for k in keys)}",
                _column_lists(rows, names),
            )
        sql = (
            f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in sets)} "
            f"WHERE {' AND '.join(f'{k} = ?' for k in keys)}"
        )
        return tx.executemany(sql, [_values(r, sets + keys) for r in rows])

    def _rebuild(self, tx: Tx, state: SnapshotState) -> tuple[int, int, int]:
        # Holds the snapshot no longer lists as active ended while the writer was behind
        # (the snapshot's active holds are re-put right after, as active; ordered ones are
        # marked by their order's lines). One not due yet was released; one past its
        # expiry was released or expired, which the snapshot cannot tell: 'ended'.
        tx.execute(
            "UPDATE cart SET status = CASE WHEN cart_expiry_ms > ? THEN 'released' "
            "ELSE 'ended' END, updated_at_ms = ?, ledger_index = ? WHERE status = 'active'",
            (state.at_ms, state.at_ms, state.index),
        )
        changes = project_snapshot(state)
        written, missing = self._write(tx, changes)
        adjustments = self._journal_adjustments(tx, state)
        if adjustments:
            written += self._write(tx, Changes(moves=adjustments))[0]
        return written, missing, changes.unsealed_dropped

    def _journal_adjustments(self, tx: Tx, state: SnapshotState) -> list[Row]:
        """Moves that bring the journal's sums to the snapshot's stock levels (the moves
        of the events the writer never saw)."""
        balances: dict[tuple[str, str], int] = {}
        for product_id, bucket, total in tx.query(
            "SELECT product_id, bucket, SUM(q) FROM ("
            " SELECT product_id, to_bucket AS bucket, quantity AS q FROM stock_moves"
            " UNION ALL"
            " SELECT product_id, from_bucket AS bucket, -quantity AS q FROM stock_moves"
            ") AS m GROUP BY product_id, bucket"
        ):
            balances[(str(product_id), str(bucket))] = int(total)
        moves: list[Row] = []
        for p in state.products:
            target = {"available": p.available, "reserved": p.reserved, "sold": p.sold}
            for bucket in BUCKETS:
                delta = target[bucket] - balances.get((p.product_id, bucket), 0)
                if delta == 0:
                    continue
                source, sink = ("outside", bucket) if delta > 0 else (bucket, "outside")
                moves.append(
                    {
                        "ledger_index": state.index,
                        "seq": SNAPSHOT_SEQ,
                        "move_no": len(moves),
                        "at_ms": state.at_ms,
                        "kind": "snapshot",
                        "product_id": p.product_id,
                        "from_bucket": source,
                        "to_bucket": sink,
                        "quantity": abs(delta),
                        "hold_id": "",
                        "order_id": "",
                    }
                )
        return moves


def _by_columns(rows: Mapping[Key, Row]) -> dict[tuple[str, ...], list[Row]]:
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows.values():
        groups.setdefault(tuple(row), []).append(row)
    return groups


_GETTERS: dict[tuple[str, ...], Callable[[Row], tuple[Any, ...]]] = {}


def _values(row: Row, columns: tuple[str, ...]) -> tuple[Any, ...]:
    getter = _GETTERS.get(columns)
    if getter is None:
        if len(columns) == 1:
            only = columns[0]
            getter = _GETTERS[columns] = lambda r: (r[only],)
        else:
            getter = _GETTERS[columns] = operator.itemgetter(*columns)
    return getter(row)


def _column_lists(rows: Sequence[Row], columns: tuple[str, ...]) -> list[list[Any]]:
    return [[r[c] for r in rows] for c in columns]
