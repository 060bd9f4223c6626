"""The committed-event feed: ordered pages of whole entries, bounded retention, snapshot
hand-off for readers left behind, and long-polls woken across threads."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from node.feed import Feed


def ev(index: int, seq: int) -> dict[str, Any]:
    return {"index": index, "seq": seq, "kind": "hold_placed"}


def publish_range(feed: Feed, first: int, last: int, per_entry: int = 2) -> None:
    for i in range(first, last + 1):
        feed.publish(i, [ev(i, s) for s in range(per_entry)])


def attached_feed(last: int) -> Feed:
    """A feed on the running loop (long-polls can wait on it) holding entries 1..last."""
    feed = Feed(1000)
    feed.attach(asyncio.get_running_loop())
    publish_range(feed, 1, last)
    return feed


def test_events_after_an_index_in_order() -> None:
    feed = Feed(1000)
    publish_range(feed, 1, 5)
    page = feed.read(2, 100)
    assert page is not None
    assert [(e["index"], e["seq"]) for e in page.events] == [
        (i, s) for i in range(3, 6) for s in range(2)
    ]
    assert page.last_index == 5


def test_limit_never_splits_an_entry() -> None:
    # Resuming from last_index must not skip the rest of a half-read entry.
    feed = Feed(1000)
    publish_range(feed, 1, 5, per_entry=3)
    page = feed.read(0, 4)
    assert page is not None
    assert len(page.events) == 3 and page.last_index == 1
    big = Feed(1000)
    big.publish(1, [ev(1, s) for s in range(10)])
    page = big.read(0, 4)  # one entry larger than the limit still comes whole
    assert page is not None and len(page.events) == 10 and page.last_index == 1


def test_entries_without_events_advance_the_reader() -> None:
    feed = Feed(1000)
    feed.publish(1, [ev(1, 0)])
    feed.publish(2, [])
    feed.publish(3, [])
    page = feed.read(1, 100)
    assert page is not None and page.events == [] and page.last_index == 3


def test_reader_at_or_past_the_head_gets_nothing_and_keeps_its_place() -> None:
    feed = Feed(1000)
    publish_range(feed, 1, 3)
    for position in (3, 7):
        page = feed.read(position, 10)
        assert page is not None and page.events == [] and page.last_index == position


def test_retention_bounds_memory_and_old_readers_need_a_snapshot() -> None:
    feed = Feed(10)
    publish_range(feed, 1, 20)  # 40 events, 10 kept
    assert feed.event_count() <= 10
    assert feed.base() == 15 and feed.head() == 20
    assert feed.read(14, 100) is None
    page = feed.read(15, 100)
    assert page is not None and page.events[0]["index"] == 16


def test_reset_after_loading_a_dump() -> None:
    feed = Feed(1000)
    feed.reset(500)  # state restored at ledger index 500: older events are unknown here
    assert feed.read(0, 10) is None
    feed.publish(501, [ev(501, 0)])
    page = feed.read(500, 10)
    assert page is not None and [e["index"] for e in page.events] == [501]


def test_gap_in_publication_restarts_the_ring() -> None:
    feed = Feed(1000)
    publish_range(feed, 1, 3)
    feed.publish(10, [ev(10, 0)])
    assert feed.read(3, 10) is None
    assert feed.base() == 9 and feed.head() == 10


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        Feed(0)
    with pytest.raises(ValueError):
        Feed(10).read(0, 0)


async def test_long_poll_is_woken_by_a_publish_from_another_thread() -> None:
    feed = attached_feed(2)
    waiter = asyncio.create_task(feed.wait_newer(2, 10.0))
    await asyncio.sleep(0.05)
    assert not waiter.done() and feed.waiters() == 1
    threading.Thread(target=feed.publish, args=(3, [ev(3, 0)])).start()
    assert await asyncio.wait_for(waiter, 5.0) is True
    page = feed.read(2, 10)
    assert page is not None and page.last_index == 3


async def test_long_poll_returns_at_once_when_newer_exists_and_times_out_otherwise() -> None:
    feed = attached_feed(2)
    assert await feed.wait_newer(1, 5.0) is True
    assert await feed.wait_newer(2, 0.05) is False


async def test_a_long_poll_ahead_of_the_feed_waits_past_publishes_below_its_index() -> None:
    # A reader at 3 polling a follower still at 1 (it lags the leader by a heartbeat):
    # the publish of 2 or 3 is nothing new to it; only 4 is.
    feed = attached_feed(1)
    waiter = asyncio.create_task(feed.wait_newer(3, 10.0))
    await asyncio.sleep(0.02)
    for index in (2, 3):
        feed.publish(index, [ev(index, 0)])
        await asyncio.sleep(0.05)
        assert not waiter.done() and feed.waiters() == 1
    feed.publish(4, [ev(4, 0)])
    assert await asyncio.wait_for(waiter, 5.0) is True
    page = feed.read(3, 10)
    assert page is not None and page.last_index == 4
    # The timeout still holds across such wake-ups.
    late = asyncio.create_task(feed.wait_newer(10, 0.2))
    await asyncio.sleep(0.02)
    feed.publish(5, [ev(5, 0)])
    assert await asyncio.wait_for(late, 5.0) is False
    assert feed.waiters() == 0


async def test_close_releases_waiters() -> None:
    feed = attached_feed(0)
    waiter = asyncio.create_task(feed.wait_newer(0, 30.0))
    await asyncio.sleep(0.01)
    feed.close()
    assert await asyncio.wait_for(waiter, 5.0) is True
    assert await feed.wait_newer(0, 30.0) is True


def test_events_are_encoded_once_on_first_read_not_when_published() -> None:
    # The Raft tick thread publishes; it must not pay for encoding (every commit waits on it).
    encoded: list[Any] = []

    def encode(event: Any) -> dict[str, Any]:
        encoded.append(event)
        return {"encoded": event}

    feed = Feed(1000, encode=encode)
    feed.publish(1, ["a", "b"])
    feed.publish(2, ["c"])
    assert encoded == []
    first = feed.read(0, 100)
    second = feed.read(0, 100)
    assert first is not None and second is not None
    assert first.events == second.events == [{"encoded": x} for x in "abc"]
    assert encoded == ["a", "b", "c"]
