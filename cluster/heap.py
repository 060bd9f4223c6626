"""Long-lived state and Python's cyclic garbage collector.

Theory of operation: a node keeps its ledger in memory, and during a sale that is
hundreds of thousands of long-lived objects (holds, carts, orders, idempotency records).
CPython's full collection (generation 2) walks every object the collector tracks, with
the whole process stopped: with 150,000 holds, about 765,000 objects and 180 ms, and it
comes back each time the heap has grown by a quarter, every few seconds at the rate a
sale commits holds (docs/BENCHMARKS.md, "Garbage collection"). A leader stopped that
long stops every commit behind it: it was the tail of the write p99.

So a process keeps what has survived out of the collector's way. Every
``freeze_interval_s`` it collects what is not frozen yet (what was allocated since the
last time: a few milliseconds) and then calls ``gc.freeze()``, which moves every
surviving object into the permanent generation that no collection walks. A frozen object
is still freed by reference counting as soon as the ledger drops it; only garbage
*cycles* among frozen objects would wait. So once every ``full_interval_s`` everything
is unfrozen and collected in full: one long pause an hour, not one every few seconds.

``next_action`` is the whole policy, pure; ``HeapKeeper.run`` is the shell, a task on
the process's event loop. ``watch_pauses`` feeds a histogram of every collection's pause
(``gc.callbacks``), so that the effect is visible in production too. ``kept_heap`` runs
both for as long as a process serves; only process entry points use it (node.server,
gateway.server.main), never an application built inside another process (tests), whose
heap is not theirs to freeze.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from enum import Enum
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("cluster.heap")

FREEZE_INTERVAL_S = 2.0  # young survivors are frozen this often (a pause of a few ms)
FULL_INTERVAL_S = 3600.0  # everything unfrozen and collected in full this often
PAUSE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Action(Enum):
    FREEZE = "freeze"  # collect the young objects, freeze the survivors
    FULL = "full"  # unfreeze everything, collect it all, freeze the survivors


def next_action(now: float, last_full: float, full_interval_s: float) -> Action:
    """What a due tick does at ``now`` (monotonic seconds) when the last full collection
    was at ``last_full``. Pure."""
    return Action.FULL if now - last_full >= full_interval_s else Action.FREEZE


def apply(action: Action) -> None:
    """Do ``action`` now (the process stops for the collection it runs)."""
    if action is Action.FULL:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


class HeapKeeper:
    """Runs ``next_action`` every ``freeze_interval_s`` (see the module docstring)."""

    def __init__(
        self,
        *,
        freeze_interval_s: float = FREEZE_INTERVAL_S,
        full_interval_s: float = FULL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if freeze_interval_s <= 0 or full_interval_s < freeze_interval_s:
            raise ValueError(
                f"freeze_interval_s={freeze_interval_s}, full_interval_s={full_interval_s}: "
                "expected 0 < freeze interval <= full interval"
            )
        self.freeze_interval_s = freeze_interval_s
        self.full_interval_s = full_interval_s
        self._clock = clock
        self._last_full = clock()

    def tick(self) -> Action:
        """One due tick: decide, then do it."""
        now = self._clock()
        action = next_action(now, self._last_full, self.full_interval_s)
        apply(action)
        if action is Action.FULL:
            self._last_full = now
        return action

    async def run(self) -> None:
        """Freeze what start-up built, then tick until cancelled."""
        apply(Action.FREEZE)
        while True:
            await asyncio.sleep(self.freeze_interval_s)
            try:
                self.tick()
            except Exception:  # never let the keeper die and the pauses come back
                log.exception("heap keeper tick failed")


class _Observer(Protocol):
    def labels(self, *values: str) -> Any: ...


def pause_histogram(prefix: str, registry: CollectorRegistry) -> Histogram:
    """``<prefix>_gc_pause_seconds``, by generation: what ``watch_pauses`` feeds."""
    return Histogram(
        f"{prefix}_gc_pause_seconds",
        "Pauses of Python's cyclic garbage collector, by generation (cluster/heap.py)",
        ["generation"],
        buckets=PAUSE_BUCKETS_S,
        registry=registry,
    )


def watch_pauses(histogram: _Observer) -> Callable[[], None]:
    """Observe every garbage collection's pause into ``histogram`` (labelled by
    generation); returns the function that stops watching."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pause = time.perf_counter() - started.pop()
            histogram.labels(str(info.get("generation", "?"))).observe(pause)

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)


@contextlib.asynccontextmanager
async def kept_heap(histogram: _Observer) -> AsyncIterator[HeapKeeper]:
    """Keep this process's heap (``HeapKeeper``) and observe its collections' pauses
    into ``histogram`` until the block ends."""
    unwatch = watch_pauses(histogram)
    keeper = HeapKeeper()
    task = asyncio.get_running_loop().create_task(keeper.run(), name="heap-keeper")
    try:
        yield keeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        unwatch()
