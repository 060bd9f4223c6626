"""Micro-benchmark of the ledger's hot path: reserves per second, in batches of 500.

Not a test (no assertion, numbers depend on the machine). Run it with
``.venv/bin/python -m loadtests.bench_ledger [--reserves N]``; it prints the rate of
``apply_encoded`` (what a node does with a Raft entry: decode + apply), of ``apply``
(typed commands, decode excluded), and of a sale of 1000 units where nearly every reserve
is refused as sold out (the common case of a flash sale). Rates use the process's CPU
time, so that other processes sharing the machine distort them less.
"""

from __future__ import annotations

import argparse
import time

from ledger import CreateProduct, Ledger, Reserve, Settings

BATCH = 500


def _fresh_ledger(stock: int) -> Ledger:
    led = Ledger(Settings())
    led.apply(
        1_000,
        [
            CreateProduct(
                key="create",
                product_id="sku-1",
                name="Flash sale item",
                price_minor=1999,
                total_stock=stock,
                per_user_limit=5,
            )
        ],
    )
    return led


def bench_encoded(reserves: int, stock: int | None = None) -> float:
    led = _fresh_ledger(reserves if stock is None else stock)
    batches = [
        [
            {
                "type": "reserve",
                "key": f"k{b}-{i}",
                "user_id": f"user-{b * BATCH + i}",
                "product_id": "sku-1",
                "quantity": 1,
                "at_ms": 2_000 + b,
            }
            for i in range(BATCH)
        ]
        for b in range(reserves // BATCH)
    ]
    started = time.process_time()
    for b, batch in enumerate(batches):
        led.apply_encoded(2_000 + b, batch)
    elapsed = time.process_time() - started
    return len(batches) * BATCH / elapsed


def bench_typed(reserves: int) -> float:
    led = _fresh_ledger(reserves)
    batches = [
        [
            Reserve(
                key=f"k{b}-{i}",
                user_id=f"user-{b * BATCH + i}",
                product_id="sku-1",
                quantity=1,
                at_ms=2_000 + b,
            )
            for i in range(BATCH)
        ]
        for b in range(reserves // BATCH)
    ]
    started = time.process_time()
    for b, batch in enumerate(batches):
        led.apply(2_000 + b, batch)
    elapsed = time.process_time() - started
    return len(batches) * BATCH / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reserves", type=int, default=100_000)
    args = parser.parse_args()
    print(f"apply_encoded: {bench_encoded(args.reserves):,.0f} reserves/s (batches of {BATCH})")
    print(f"apply:         {bench_typed(args.reserves):,.0f} reserves/s (batches of {BATCH})")
    sold_out = bench_encoded(args.reserves, stock=1_000)
    print(f"apply_encoded, 1000 units then sold out: {sold_out:,.0f} reserves/s")


if __name__ == "__main__":
    main()
