"""``python -m snapshots.bench --url URL``: how many feed events per second the snapshot
writer applies to a store.

A seeded sale (``snapshots.sale``) is played into an in-process ledger first, untimed;
then a writer applies its whole feed to the store, pages of ``--batch-events`` events,
one transaction each, and the run reports events per second. ``--url`` names an empty
store: a new SQLite file, or a PostgreSQL database where ``--fresh-schema`` makes (and
drops afterwards) a schema of its own, so the run never touches other tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from snapshots.ledger_feed import LedgerFeed
from snapshots.sale import SALE_SETTINGS, simulate_sale
from snapshots.store import SnapshotStore
from snapshots.writer import SnapshotWriter


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """``url`` with its connections in a new schema, dropped at the end."""
    schema = "bench_" + secrets.token_hex(6)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def measure(url: str, *, entries: int, batch_events: int, seed: int) -> dict[str, Any]:
    """Play a sale of ``entries`` ledger entries, then time writing its feed to ``url``."""
    feed = LedgerFeed(10**9, SALE_SETTINGS)
    simulate_sale(feed, seed=seed, entries=entries)
    writer = SnapshotWriter(
        lambda: SnapshotStore.open(url), feed, batch_events=batch_events, wait_ms=0
    )

    async def run() -> tuple[float, int, int]:
        await writer._ensure_store()  # migrations are not part of the measure
        events = transactions = 0
        start = time.perf_counter()
        while writer.position < feed.ledger.index:
            applied = await writer.step(wait_ms=0)
            if applied is not None:
                events += applied.events
                transactions += 1
        elapsed = time.perf_counter() - start
        await writer._drop_store()
        return elapsed, events, transactions

    elapsed_s, events, transactions = asyncio.run(run())
    return {
        "store": url.split(":", 1)[0],
        "entries": feed.ledger.index,
        "events": events,
        "batch_events": batch_events,
        "transactions": transactions,
        "seconds": round(elapsed_s, 3),
        "events_per_s": round(events / elapsed_s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapshots.bench", description=__doc__)
    parser.add_argument(
        "--url", required=True, help="an empty store: sqlite:///path or postgresql://..."
    )
    parser.add_argument("--fresh-schema", action="store_true", help="PostgreSQL: use a new schema")
    parser.add_argument("--entries", type=int, default=2000, help="ledger entries of the sale")
    parser.add_argument("--batch-events", type=int, default=5000, help="events per transaction")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with fresh_schema(args.url) if args.fresh_schema else _same(args.url) as url:
        result = measure(url, entries=args.entries, batch_events=args.batch_events, seed=args.seed)
    print(json.dumps(result))
    return 0


@contextmanager
def _same(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    sys.exit(main())
