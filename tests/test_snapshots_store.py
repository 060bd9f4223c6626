"""The snapshot store: after a sale its rows match the ledger, on SQLite and PostgreSQL;
every event is applied exactly once, whatever was replayed, interrupted or skipped."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.config import ConfigError, build_config
from ledger import HoldPlaced, Ledger
from pii.envelope import is_sealed
from snapshots.ledger_feed import LedgerFeed
from snapshots.projection import SNAPSHOT_SEQ, decode_snapshot, payment_id_of
from snapshots.sale import SALE_SETTINGS, run_sale, simulate_sale
from snapshots.store import MAX_ROWS_PER_STATEMENT, FeedPage, GapError, SnapshotStore
from snapshots.writer import SnapshotWriter
from tests.support.stores import STORE_KINDS, store_url

PAYMENT_OF = {"pending": "pending", "paid": "completed", "failed": "failed"}


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as u:
        yield u


@pytest.fixture
def store(url: str) -> Iterator[SnapshotStore]:
    s = SnapshotStore.open(url)
    try:
        yield s
    finally:
        s.close()


def sale_feed(seed: int, entries: int, retention_events: int = 10**7, **kw: Any) -> LedgerFeed:
    feed = LedgerFeed(retention_events, SALE_SETTINGS)
    simulate_sale(feed, seed=seed, entries=entries, **kw)
    return feed


def write_all(url: str, feed: LedgerFeed, batch_events: int = 500) -> SnapshotWriter:
    writer = SnapshotWriter(
        lambda: SnapshotStore.open(url), feed, batch_events=batch_events, wait_ms=0
    )

    async def go() -> None:
        await writer.catch_up(feed.ledger.index, timeout_s=120)
        await writer._drop_store()

    asyncio.run(go())
    return writer


def rows(store: SnapshotStore, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    table = sql.split(" FROM ")[1].split()[0]
    names = (
        [
            r[0]
            for r in store.db.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND table_schema = current_schema() ORDER BY ordinal_position",
                (table,),
            )
        ]
        if store.db.dialect == "postgresql"
        else [r[1] for r in store.db.query(f"PRAGMA table_info({table})")]
    )
    return [dict(zip(names, r, strict=True)) for r in store.db.query(sql, params)]


def mismatches(store: SnapshotStore, ledger: Ledger) -> list[str]:
    """Every way the store's rows differ from the ledger's state (empty: they match)."""
    problems: list[str] = []
    state = decode_snapshot(ledger.snapshot_view())
    inventory = {r["product_id"]: r for r in rows(store, "SELECT * FROM inventory")}
    for p in state.products:
        r = inventory.pop(p.product_id, None)
        want = {
            "product_name": p.name,
            "available_quantity": p.available,
            "reserved_quantity": p.reserved,
            "sold_quantity": p.sold,
            "total_stock": p.total_stock,
            "price_minor": p.price_minor,
            "currency": p.currency,
            "per_user_limit": p.per_user_limit,
            "hold_ttl_ms": p.hold_ttl_ms,
            "last_updated_ms": p.updated_at_ms,
        }
        got = None if r is None else {k: r[k] for k in want}
        if got != want:
            problems.append(f"inventory {p.product_id}: {got} != {want}")
    problems += [f"inventory {pid}: not in the ledger" for pid in inventory]

    orders = {r["order_id"]: r for r in rows(store, "SELECT * FROM orders")}
    payments = {r["order_id"]: r for r in rows(store, "SELECT * FROM payment")}
    lines: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows(store, "SELECT * FROM order_lines ORDER BY order_id, line_no"):
        lines.setdefault(r["order_id"], []).append(
            (r["product_id"], r["quantity"], r["unit_price_minor"], r["hold_id"])
        )
    for o in state.orders:
        r = orders.get(o.order_id)
        sealed = o.sealed_details if is_sealed(o.sealed_details) else None
        want_o = {
            "user_id": o.user_id,
            "cart_id": o.cart_id,
            "order_status": o.status.value,
            "payment_status": o.payment_status.value,
            "amount_minor": o.amount_minor,
            "currency": o.currency,
            "payment_method": o.payment_method,
            "failure": o.failure,
            "created_at_ms": o.created_at_ms,
            "pay_by_ms": o.pay_by_ms,
            "pii_sealed": sealed,
        }
        got_o = None if r is None else {k: r[k] for k in want_o}
        if got_o != want_o:
            problems.append(f"order {o.order_id}: {got_o} != {want_o}")
        want_lines = [(x.product_id, x.quantity, x.unit_price_minor, x.hold_id) for x in o.lines]
        if lines.get(o.order_id) != want_lines:
            problems.append(f"order {o.order_id} lines: {lines.get(o.order_id)} != {want_lines}")
        pay = payments.get(o.order_id)
        ended_by_payment = o.failure in ("", "payment_failed") and o.status.value != "pending"
        want_p = {
            "payment_id": payment_id_of(o.order_id),
            "payment_status": PAYMENT_OF[o.payment_status.value],
            "provider": o.provider,
            "transaction_id": o.transaction_id,
            "amount_minor": o.amount_minor,
            "declined_attempts": o.payment_attempts - (1 if ended_by_payment else 0),
        }
        got_p = None if pay is None else {k: pay[k] for k in want_p}
        if got_p != want_p:
            problems.append(f"payment of {o.order_id}: {got_p} != {want_p}")

    for r in rows(store, "SELECT * FROM cart"):
        hold = ledger.hold(r["hold_id"])
        if hold is None:
            continue  # pruned by the ledger after its retention
        want_h = {
            "cart_id": hold.cart_id,
            "user_id": hold.user_id,
            "product_id": hold.product_id,
            "quantity": hold.quantity,
            "cart_expiry_ms": hold.expires_at_ms,
            "status": hold.status.value,
        }
        got_h = {k: r[k] for k in want_h}
        if r["status"] == "ended" and hold.status.value in ("released", "expired"):
            got_h["status"] = hold.status.value  # a rebuild could not tell which
        if got_h != want_h:
            problems.append(f"hold {hold.hold_id}: {got_h} != {want_h}")
    active = {r["hold_id"] for r in rows(store, "SELECT * FROM cart WHERE status = 'active'")}
    if active != {h.hold_id for h in state.holds}:
        problems.append(
            f"active holds {sorted(active)} != {sorted(h.hold_id for h in state.holds)}"
        )

    balances: dict[tuple[str, str], int] = {}
    for m in rows(store, "SELECT * FROM stock_moves"):
        balances[(m["product_id"], m["to_bucket"])] = (
            balances.get((m["product_id"], m["to_bucket"]), 0) + m["quantity"]
        )
        balances[(m["product_id"], m["from_bucket"])] = (
            balances.get((m["product_id"], m["from_bucket"]), 0) - m["quantity"]
        )
    for p in state.products:
        got_b = tuple(balances.get((p.product_id, b), 0) for b in ("available", "reserved", "sold"))
        if got_b != (p.available, p.reserved, p.sold):
            problems.append(f"journal of {p.product_id}: {got_b}")
    if store.applied_index() != ledger.index:
        problems.append(f"applied index {store.applied_index()} != ledger {ledger.index}")
    return problems


def count_moves(feed: LedgerFeed) -> int:
    page = feed.ring.read(0, 10**9)
    assert page is not None
    return sum(len(e["moves"]) for e in page.events)


def test_after_a_sale_the_rows_match_the_ledger(url: str) -> None:
    feed = sale_feed(seed=7, entries=300)
    write_all(url, feed)
    store = SnapshotStore.open(url)
    try:
        assert mismatches(store, feed.ledger) == []
        counts = dict(store.db.query("SELECT order_status, COUNT(*) FROM orders GROUP BY 1"))
        # The sale exercised every outcome, so the comparison above covered each of them.
        assert set(counts) == {"pending", "completed", "failed"}
        cart = dict(store.db.query("SELECT status, COUNT(*) FROM cart GROUP BY 1"))
        assert set(cart) == {"active", "released", "expired", "ordered"}
        moves = store.db.query("SELECT COUNT(*) FROM stock_moves")[0][0]
        assert moves == count_moves(feed)
    finally:
        store.close()


def test_one_event_per_transaction_or_thousands_give_the_same_rows(tmp_path: Path) -> None:
    feed = sale_feed(seed=3, entries=300)
    with (
        store_url("sqlite", tmp_path, "small") as small,
        store_url("sqlite", tmp_path, "big") as big,
    ):
        write_all(small, feed, batch_events=1)
        write_all(big, feed, batch_events=10_000)
        a, b = SnapshotStore.open(small), SnapshotStore.open(big)
        try:
            assert a.dump() == b.dump()
            # The big transactions split their inserts into several statements.
            assert len(b.dump()["stock_moves"]) > MAX_ROWS_PER_STATEMENT
        finally:
            a.close()
            b.close()


def test_a_page_applied_twice_changes_nothing_the_second_time(store: SnapshotStore) -> None:
    feed = sale_feed(seed=11, entries=60)
    page = asyncio.run(feed.fetch(0, 10**6, 0))
    first = store.apply_page(page, 0)
    before = store.dump()
    again = store.apply_page(page, 0)  # a writer that crashed after commit, before it knew
    assert first.events > 0 and first.index == feed.ledger.index
    assert again.events == 0 and again.rows == 0
    assert store.dump() == before


def test_a_page_starting_after_the_applied_index_is_refused(store: SnapshotStore) -> None:
    feed = sale_feed(seed=5, entries=20)
    later = asyncio.run(feed.fetch(10, 1000, 0))
    with pytest.raises(GapError, match="refetch from 0"):
        store.apply_page(later, 10)
    assert store.applied_index() == 0


class Crash(Exception):
    """What a power cut looks like to the transaction: it stops halfway."""


class CrashingTx:
    def __init__(self, tx: Any, budget: list[int]) -> None:
        self._tx = tx
        self._budget = budget

    def _spend(self) -> None:
        self._budget[0] -= 1
        if self._budget[0] == 0:
            raise Crash

    def execute(self, sql: str, params: Any = ()) -> int:
        self._spend()
        return int(self._tx.execute(sql, params))

    def executemany(self, sql: str, rows: Any) -> int:
        self._spend()
        return int(self._tx.executemany(sql, rows))

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        self._spend()
        return list(self._tx.query(sql, params))


class CrashingDb:
    """A database whose transactions die after ``budget`` statements, in the middle."""

    def __init__(self, db: Any, budget: int) -> None:
        self._db = db
        self.dialect = db.dialect
        self._budget = [budget]

    def transaction(self) -> Any:
        db, budget = self._db, self._budget

        class _Ctx:
            def __enter__(self) -> CrashingTx:
                self._inner = db.transaction()
                return CrashingTx(self._inner.__enter__(), budget)

            def __exit__(self, *exc: Any) -> Any:
                return self._inner.__exit__(*exc)

        return _Ctx()

    def query(self, sql: str, params: Any = ()) -> Any:
        return self._db.query(sql, params)

    def execute_script(self, sql: str) -> None:
        self._db.execute_script(sql)

    def close(self) -> None:
        self._db.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_a_writer_that_dies_mid_transaction_and_restarts_loses_and_duplicates_nothing(
    url: str, tmp_path: Path, seed: int
) -> None:
    feed = sale_feed(seed=seed, entries=150, retention_events=10**7)
    with store_url("sqlite", tmp_path, "reference") as ref_url:
        write_all(ref_url, feed, batch_events=97)
        reference = SnapshotStore.open(ref_url)
        expected = reference.dump()
        reference.close()
    crashes = 0
    rnd = random.Random(seed)

    def crashing_store() -> SnapshotStore:
        # Dies after 1..60 statements: a transaction has ~5..15, so some commit first.
        plain = SnapshotStore.open(url)
        return SnapshotStore(CrashingDb(plain.db, rnd.randint(1, 60)))

    async def run() -> None:
        nonlocal crashes
        writer = SnapshotWriter(crashing_store, feed, batch_events=97, wait_ms=0)
        while writer.position < feed.ledger.index:
            try:
                await writer.step()
            except Crash:
                crashes += 1
                await writer._drop_store()  # the process is gone: a new one starts
        await writer._drop_store()

    asyncio.run(run())
    assert crashes > 10
    store = SnapshotStore.open(url)
    try:
        assert store.dump() == expected
        assert mismatches(store, feed.ledger) == []
    finally:
        store.close()


def test_a_writer_behind_the_feed_retention_rebuilds_from_a_snapshot(url: str) -> None:
    feed = LedgerFeed(300, SALE_SETTINGS)  # a node that keeps only ~300 events
    sale = simulate_sale(feed, seed=21, entries=40)
    store = SnapshotStore.open(url)
    try:
        first = asyncio.run(feed.fetch(0, 200, 0))
        assert first.snapshot is not None  # index 0 is long gone from the ring
        store.apply_page(first, 0)
        # The writer now stops for a while; the sale goes on past the ring's retention.
        position = store.applied_index()
        run_sale(sale, entries=60)
        assert feed.ring.base() > position
        write_all(url, feed, batch_events=200)
        assert mismatches(store, feed.ledger) == []
        rebuilt = store.db.query("SELECT rebuilt_from_index FROM applied_index")[0][0]
        assert rebuilt > position
        adjustments = store.db.query(
            "SELECT COUNT(*) FROM stock_moves WHERE seq = ?", (SNAPSHOT_SEQ,)
        )[0][0]
        assert adjustments > 0
    finally:
        store.close()


def test_details_that_are_not_sealed_are_never_stored(store: SnapshotStore) -> None:
    feed = LedgerFeed(10_000, SALE_SETTINGS)
    t = 1_000
    feed.apply(
        t,
        [
            {
                "type": "create_product",
                "key": "c",
                "product_id": "p",
                "name": "P",
                "price_minor": 100,
                "total_stock": 5,
            }
        ],
    )
    hold = feed.apply(
        t + 1, [{"type": "reserve", "key": "r", "user_id": "u", "product_id": "p", "quantity": 1}]
    ).results[0]
    assert isinstance(hold, HoldPlaced)
    plain = '{"shipping_address":{"address_line1":"1 Plain Street"}}'
    feed.apply(
        t + 2,
        [
            {
                "type": "checkout",
                "key": "k",
                "user_id": "u",
                "cart_id": hold.cart_id,
                "sealed_details": plain,
            }
        ],
    )
    applied = store.apply_page(asyncio.run(feed.fetch(0, 100, 0)), 0)
    assert applied.unsealed_dropped == 1
    assert store.db.query("SELECT pii_sealed, pii_key_id FROM orders") == [(None, None)]
    assert "Plain Street" not in repr(store.dump())


def test_a_store_built_from_a_snapshot_alone_matches_the_ledger(store: SnapshotStore) -> None:
    feed = sale_feed(seed=9, entries=60)
    page = FeedPage(events=[], last_index=feed.ledger.index, snapshot=feed.ledger.snapshot_view())
    applied = store.apply_page(page, 0)
    assert applied.rebuilt_from == feed.ledger.index == store.applied_index()
    assert mismatches(store, feed.ledger) == []


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"batch_events": 10_001}, "at most 10000 events per feed page"),
        ({"batch_events": 0}, r"snapshots\.batch_events=0"),
        ({"feed_wait_ms": 30_001}, "long-poll at most 30000 ms"),
        ({"listen": "nowhere"}, r"snapshots\.listen='nowhere'"),
    ],
)
def test_the_writers_limits_are_checked_when_the_config_is_read(
    section: dict[str, Any], message: str, tmp_path: Path
) -> None:
    data: dict[str, Any] = {
        "cluster": {"secret": "s" * 40},
        "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
        "snapshots": section,
    }
    with pytest.raises(ConfigError, match=message):
        build_config(data, tmp_path)
    data["snapshots"] = {"listen": "127.0.0.1:2"}  # the node's API address
    with pytest.raises(ConfigError, match="duplicate listen address"):
        build_config(data, tmp_path)
