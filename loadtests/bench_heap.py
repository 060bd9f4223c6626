"""Micro-benchmark: the garbage collector's pauses as a ledger fills, with and without
the heap keeper's policy (cluster/heap.py).

Not a test (no assertion, numbers depend on the machine). Run it with
``.venv/bin/python -m loadtests.bench_heap [--holds 150000]``. It applies reserves in
batches of 500 (what a node applies from Raft entries) twice, in fresh processes' worth
of state: once with the collector left alone, once collecting and freezing every
``--freeze-every`` batches as the keeper does every 2 s; it prints, per generation, how
many collections ran, the longest pause and their total, and the CPU time of the run.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from ledger import Reserve
from loadtests.bench_ledger import BATCH, _fresh_ledger

Pauses = list[tuple[int, float]]


def _watch(pauses: Pauses) -> Callable[[str, dict[str, int]], None]:
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((info["generation"], time.perf_counter() - started.pop()))

    return callback


def run(holds: int, freeze_every: int | None) -> tuple[Pauses, float]:
    """Apply ``holds`` reserves; the pauses seen and the CPU seconds taken."""
    ledger = _fresh_ledger(holds)
    pauses: Pauses = []
    callback = _watch(pauses)
    gc.callbacks.append(callback)
    cpu = time.process_time()
    try:
        for b in range(holds // BATCH):
            ledger.apply(2_000 + b, [
                Reserve(key=f"k{b}-{i}", user_id=f"u{b}-{i}", product_id="sku-1", quantity=1)
                for i in range(BATCH)
            ])  # fmt: skip
            if freeze_every and b % freeze_every == freeze_every - 1:
                gc.collect()
                gc.freeze()
        return pauses, time.process_time() - cpu
    finally:
        gc.callbacks.remove(callback)
        gc.unfreeze()
        del ledger
        gc.collect()


def report(title: str, pauses: Pauses, cpu_s: float) -> None:
    print(f"{title}: {cpu_s:.2f} CPU s")
    for generation in (0, 1, 2):
        mine = [p for g, p in pauses if g == generation]
        if mine:
            print(f"  generation {generation}: {len(mine):5d} collections, longest "
                  f"{max(mine) * 1000:6.1f} ms, total {sum(mine) * 1000:6.0f} ms")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_heap")
    parser.add_argument("--holds", type=int, default=150_000)
    parser.add_argument("--freeze-every", type=int, default=20,
                        help="batches of 500 between two freezes (20: 10,000 holds, about "
                             "2 s of a sale committing 5,000 holds/s)")  # fmt: skip
    args = parser.parse_args(argv)
    report("collector left alone", *run(args.holds, None))
    report(f"collect + freeze every {args.freeze_every} batches",
           *run(args.holds, args.freeze_every))  # fmt: skip


if __name__ == "__main__":
    main()
