"""The heap keeper keeps long-lived state out of the collector's full passes
(cluster/heap.py), without keeping dropped objects alive."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram

from cluster.heap import Action, HeapKeeper, kept_heap, next_action, watch_pauses


class Record:
    """Stands for a ledger record: a tracked object the collector would walk."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.refs: list[Any] = []


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    # A frozen heap would outlive the test in this process: give it back.
    yield
    gc.unfreeze()


@pytest.mark.parametrize(
    ("now", "last_full", "expected"),
    [
        (10.0, 0.0, Action.FREEZE),
        (3599.9, 0.0, Action.FREEZE),
        (3600.0, 0.0, Action.FULL),
        (7300.0, 3600.0, Action.FULL),
    ],
)
def test_a_full_collection_comes_once_per_interval(
    now: float, last_full: float, expected: Action
) -> None:
    assert next_action(now, last_full, 3600.0) is expected


def test_survivors_are_frozen_out_of_the_collectors_walk_but_still_freed_when_dropped() -> None:
    records = [Record(i) for i in range(2_000)]
    probe = weakref.ref(records[0])
    clock = [100.0]
    keeper = HeapKeeper(freeze_interval_s=1.0, full_interval_s=10.0, clock=lambda: clock[0])
    assert keeper.tick() is Action.FREEZE
    walked = {id(o) for o in gc.get_objects()}
    assert not any(id(r) in walked for r in records)  # the collector no longer walks them
    assert gc.get_freeze_count() >= len(records)
    del records
    assert probe() is None  # reference counting still frees a frozen object


def test_a_full_pass_collects_cycles_that_died_while_frozen() -> None:
    a, b = Record(1), Record(2)
    a.refs.append(b)
    b.refs.append(a)  # a cycle: only the collector can free it
    probe = weakref.ref(a)
    clock = [0.0]
    keeper = HeapKeeper(freeze_interval_s=1.0, full_interval_s=10.0, clock=lambda: clock[0])
    keeper.tick()  # frozen while alive
    del a, b
    clock[0] = 5.0
    assert keeper.tick() is Action.FREEZE
    assert probe() is not None  # frozen garbage waits for the full pass...
    clock[0] = 10.0
    assert keeper.tick() is Action.FULL
    assert probe() is None  # ...which frees it


def test_the_intervals_are_checked() -> None:
    with pytest.raises(ValueError, match="freeze interval"):
        HeapKeeper(freeze_interval_s=0)
    with pytest.raises(ValueError, match="freeze interval"):
        HeapKeeper(freeze_interval_s=10, full_interval_s=5)


async def test_the_keeper_freezes_what_start_up_built_and_keeps_ticking() -> None:
    keeper = HeapKeeper(freeze_interval_s=0.01, full_interval_s=60.0)
    task = asyncio.create_task(keeper.run())
    await asyncio.sleep(0.05)
    assert gc.get_freeze_count() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_every_collection_pause_is_observed_by_generation() -> None:
    registry = CollectorRegistry()
    pauses = Histogram("pauses", "gc pauses", ["generation"], registry=registry)
    unwatch = watch_pauses(pauses)
    try:
        gc.collect()
    finally:
        unwatch()
    assert registry.get_sample_value("pauses_count", {"generation": "2"}) == 1
    gc.collect()  # no longer watched
    assert registry.get_sample_value("pauses_count", {"generation": "2"}) == 1


async def test_a_kept_heap_is_kept_and_watched_until_the_block_ends() -> None:
    registry = CollectorRegistry()
    pauses = Histogram("pauses", "gc pauses", ["generation"], registry=registry)
    callbacks = len(gc.callbacks)
    async with kept_heap(pauses):
        await asyncio.sleep(0.01)  # the keeper's first pass: collect, then freeze
        assert gc.get_freeze_count() > 0
        assert registry.get_sample_value("pauses_count", {"generation": "2"}) == 1
    assert len(gc.callbacks) == callbacks  # no longer watched
