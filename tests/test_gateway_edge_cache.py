"""The edge cache and its feed follower (gateway.edge_cache), fed by a real Ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from cluster.errors import Unreachable
from gateway.edge_cache import EdgeCache, FeedFollower
from gateway.metrics import GatewayMetrics
from ledger import Ledger
from ledger.codec import encode_event, encode_view

T0 = 1_700_000_000_000


class LedgerFeed:
    """A ledger whose batches are kept as a node's feed would serve them."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.chunks: dict[int, list[dict[str, Any]]] = {}
        self.now_ms = T0

    def apply(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        self.now_ms += 10
        applied = self.ledger.apply_encoded(self.now_ms, list(commands))
        self.chunks[applied.index] = [encode_event(e) for e in applied.events]
        return self.chunks[applied.index]

    def page(self, from_index: int) -> dict[str, Any]:
        events = [e for i in sorted(self.chunks) if i > from_index for e in self.chunks[i]]
        return {"events": events, "last_index": self.ledger.index, "snapshot": None}

    def product(self, pid: str) -> dict[str, Any]:
        view = self.ledger.product(pid)
        assert view is not None
        return dict(encode_view(view))


def _create(pid: str, stock: int, **extra: Any) -> dict[str, Any]:
    return {"type": "create_product", "key": f"create-{pid}", "product_id": pid,
            "name": f"Product {pid}", "price_minor": 1999, "total_stock": stock, **extra}


def _reserve(key: str, user: str, pid: str, q: int = 1) -> dict[str, Any]:
    return {"type": "reserve", "key": key, "user_id": user, "product_id": pid, "quantity": q}


def _same_stock(cache: EdgeCache, feed: LedgerFeed, pid: str) -> None:
    cached, real = cache.product(pid), feed.product(pid)
    assert cached is not None
    for k in ("total_stock", "available", "reserved", "sold", "name", "price_minor"):
        assert cached[k] == real[k], k


def test_events_keep_the_cache_equal_to_the_ledger() -> None:
    feed, cache = LedgerFeed(), EdgeCache()
    steps = [
        (_create("p1", 3, per_user_limit=2),),
        (_reserve("a:1", "a", "p1"), _reserve("b:1", "b", "p1", 2)),
        (_reserve("c:1", "c", "p1"),),  # sold out: refused
        ({"type": "release", "key": "a:2", "user_id": "a", "hold_id": "h1"},),
        ({"type": "restock", "key": "r1", "product_id": "p1", "quantity": 5},),
    ]
    for step in steps:
        for event in feed.apply(*step):
            assert cache.apply(event)
        _same_stock(cache, feed, "p1")
        assert cache.index == feed.ledger.index
    assert cache.product("p1")["per_user_limit"] == 2  # type: ignore[index]


def test_sold_out_is_known_at_once_and_forgotten_when_units_return() -> None:
    feed, cache = LedgerFeed(), EdgeCache()
    for e in feed.apply(_create("p1", 1)):
        cache.apply(e)
    assert not cache.is_sold_out("p1")
    for e in feed.apply(_reserve("a:1", "a", "p1")):
        cache.apply(e)
    assert cache.is_sold_out("p1")
    for e in feed.apply({"type": "release", "key": "a:2", "user_id": "a", "hold_id": "h1"}):
        cache.apply(e)
    assert not cache.is_sold_out("p1")
    assert cache.available("p1") == 1


def test_unknown_products_are_never_called_sold_out() -> None:
    assert not EdgeCache().is_sold_out("nope")


def test_an_event_applied_twice_changes_nothing() -> None:
    feed, cache = LedgerFeed(), EdgeCache()
    created = feed.apply(_create("p1", 5))
    reserved = feed.apply(_reserve("a:1", "a", "p1"))
    for e in created + reserved:
        assert cache.apply(e)
    for e in created + reserved:
        assert not cache.apply(e)
    assert cache.available("p1") == 4


def test_hold_keys_are_remembered_for_retries() -> None:
    feed, cache = LedgerFeed(), EdgeCache()
    for e in feed.apply(_create("p1", 1)) + feed.apply(_reserve("alice:k1", "alice", "p1")):
        cache.apply(e)
    assert cache.hold_key_seen("alice:k1")
    assert not cache.hold_key_seen("bob:k1")


def test_a_snapshot_replaces_everything_and_events_continue_after_it() -> None:
    feed, cache = LedgerFeed(), EdgeCache()
    for e in feed.apply(_create("gone", 1)):
        cache.apply(e)
    fresh = LedgerFeed()  # a different history: the cache must not keep "gone"
    fresh.apply(_create("p1", 4))
    fresh.apply(_reserve("a:1", "a", "p1"))
    cache.reset(fresh.ledger.snapshot_view())
    assert cache.product("gone") is None
    assert cache.index == fresh.ledger.index
    _same_stock(cache, fresh, "p1")
    for e in fresh.apply(_reserve("b:1", "b", "p1", 3)):
        assert cache.apply(e)
    assert cache.is_sold_out("p1")


def test_advance_covers_entries_without_events() -> None:
    cache = EdgeCache()
    cache.advance(7)
    assert cache.index == 7
    assert not cache.apply({"index": 7, "seq": 0, "kind": "hold_placed", "stock": []})


def test_a_product_event_without_terms_asks_for_details() -> None:
    cache = EdgeCache()
    cache.apply({"index": 1, "seq": 0, "kind": "restocked",
                 "stock": [{"product_id": "p9", "total_stock": 3, "available": 3,
                            "reserved": 0, "sold": 0}]})
    assert cache.needs_details == {"p9"}
    cache.set_details({"product_id": "p9", "name": "Nine", "price_minor": 5, "available": 99})
    assert cache.needs_details == set()
    p = cache.product("p9")
    assert p is not None and p["name"] == "Nine"
    assert p["available"] == 3  # the event's level, not the (possibly older) read's


# -- the follower --------------------------------------------------------------------


class ScriptedFeed:
    """Serves a LedgerFeed's pages; fails the requests listed in ``failures``."""

    def __init__(self, feed: LedgerFeed, failures: int = 0) -> None:
        self.feed = feed
        self.failures = failures
        self.requests: list[int] = []
        self.snapshot_below = 0  # requests from below this get a snapshot

    async def fetch(self, from_index: int, limit: int, wait_ms: int) -> Mapping[str, Any]:
        self.requests.append(from_index)
        if self.failures:
            self.failures -= 1
            raise Unreachable("node down")
        if from_index < self.snapshot_below:
            return {"events": [], "last_index": self.feed.ledger.index,
                    "snapshot": self.feed.ledger.snapshot_view()}
        if from_index >= self.feed.ledger.index:
            await asyncio.sleep(min(wait_ms, 20) / 1000)  # a short long-poll
        return self.feed.page(from_index)


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def test_the_follower_catches_up_and_reports_ready() -> None:
    feed = LedgerFeed()
    feed.apply(_create("p1", 2))
    feed.apply(_reserve("a:1", "a", "p1"))
    source = ScriptedFeed(feed)
    metrics = GatewayMetrics()
    follower = FeedFollower(EdgeCache(), source.fetch, wait_ms=50, metrics=metrics)
    task = asyncio.ensure_future(follower.run())
    try:
        await _until(lambda: follower.ready(asyncio.get_running_loop().time()))
        assert follower.cache.index == feed.ledger.index
        assert follower.cache.available("p1") == 1
        feed.apply(_reserve("b:1", "b", "p1"))
        await _until(lambda: follower.cache.is_sold_out("p1"))
        assert metrics.cache_index._value.get() == feed.ledger.index
    finally:
        task.cancel()


async def test_the_follower_survives_failed_requests() -> None:
    feed = LedgerFeed()
    feed.apply(_create("p1", 2))
    source = ScriptedFeed(feed, failures=3)
    metrics = GatewayMetrics()
    follower = FeedFollower(EdgeCache(), source.fetch, wait_ms=50, metrics=metrics)
    task = asyncio.ensure_future(follower.run())
    try:
        await _until(lambda: follower.ready(asyncio.get_running_loop().time()))
        assert metrics.feed_errors._value.get() == 3
        assert follower.cache.available("p1") == 2
    finally:
        task.cancel()


async def test_the_follower_resets_from_a_snapshot_when_the_node_lacks_old_events() -> None:
    feed = LedgerFeed()
    feed.apply(_create("p1", 5))
    feed.apply(_reserve("a:1", "a", "p1", 2))
    source = ScriptedFeed(feed)
    source.snapshot_below = feed.ledger.index  # the node kept nothing older
    metrics = GatewayMetrics()
    follower = FeedFollower(EdgeCache(), source.fetch, wait_ms=50, metrics=metrics)
    await follower.poll_once()
    assert metrics.feed_resets._value.get() == 1
    assert follower.cache.index == feed.ledger.index
    assert follower.cache.available("p1") == 3


async def test_a_follower_without_answers_goes_stale() -> None:
    follower = FeedFollower(EdgeCache(), ScriptedFeed(LedgerFeed()).fetch, wait_ms=0)
    await follower.poll_once()
    now = asyncio.get_running_loop().time()
    assert follower.ready(now)
    assert not follower.ready(now + 60)


async def test_a_full_page_is_not_caught_up() -> None:
    follower = FeedFollower(EdgeCache(), ScriptedFeed(LedgerFeed()).fetch, wait_ms=0,
                            page_events=2)
    full = [{"index": 1, "seq": s, "kind": "settings_changed"} for s in range(2)]
    follower.absorb({"events": full, "last_index": 1})
    assert not follower.status.caught_up
    follower.absorb({"events": [], "last_index": 1})
    assert follower.status.caught_up
    follower.absorb({"events": [], "last_index": 1, "head": 5})
    assert not follower.status.caught_up
