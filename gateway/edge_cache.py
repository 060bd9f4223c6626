"""The edge cache: products and stock in memory, kept current by the committed-event feed.

Theory of operation: ``EdgeCache`` is pure state. ``reset(snapshot)`` replaces it with a
ledger snapshot view; ``apply(event)`` folds one committed event into it. Events carry
the stock levels of every product they touch after the event, so applying one means
keeping the latest levels; product events carry the product's terms (when they do not,
the product is marked for a detail fetch). Events are applied at most once, in
``(index, seq)`` order: a page that repeats events already seen changes nothing.

``FeedFollower`` is the I/O shell: it long-polls ``GET /v1/feed`` from the cache's
index on any node (the cluster client moves to another node when one fails), applies
the answer (snapshot first, when the node no longer retains what the cache needs), and
records whether it is caught up (the latest answer, received recently, left nothing
newer waiting on the node). Requests use the cache for reads and for one
refusal only: a hold for a product whose available count is 0 is refused at once. The
leader still decides every hold it receives; the cache never accepts one.

Answers built from one product at one ledger index (the inventory read's body, the
sold-out refusal) are encoded once and kept (``encoded``) until the cache changes: a
read is then a dict lookup, not a copy and a JSON encoding per request.

The cache also remembers the idempotency keys of recent holds (bounded), so a shopper
retrying a hold that was placed before the product sold out reaches the leader and gets
the first answer back, instead of a sold-out from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster.errors import ClusterError
from gateway.metrics import GatewayMetrics

log = logging.getLogger("gateway.edge_cache")

MAX_REMEMBERED_HOLD_KEYS = 200_000  # idempotency keys of placed holds kept for retries
MAX_PRODUCTS = 100_000  # products kept (a sale has a handful; this bounds memory)
FEED_PAGE_EVENTS = 10_000  # events asked for per feed request (the nodes' maximum)
FEED_TIMEOUT_MARGIN_S = 3.0  # on top of the long-poll wait, before a feed request fails
STALE_AFTER_MARGIN_S = 5.0  # no answer for wait + this: no longer caught up
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0

_STOCK_FIELDS = ("total_stock", "available", "reserved", "sold")
_PRODUCT_EVENTS = {"product_created", "product_updated"}
_PRODUCT_FIELDS = {
    "product_id",
    "name",
    "price_minor",
    "currency",
    "total_stock",
    "available",
    "reserved",
    "sold",
    "opens_at_ms",
    "closes_at_ms",
    "per_user_limit",
    "hold_ttl_ms",
    "updated_at_ms",
}


class EdgeCache:
    """Products (ProductView dicts) at ledger ``index``; see the module docstring."""

    def __init__(self) -> None:
        self.index = 0
        self._last_seq = -1  # seq of the last applied event at ``index``; -1: none
        self._products: dict[str, dict[str, Any]] = {}
        self._hold_keys: OrderedDict[str, None] = OrderedDict()
        self.needs_details: set[str] = set()  # products whose terms an event did not carry
        # (product, kind) -> answer bytes, valid at ``_encoded_index`` until any change.
        self._encoded: dict[tuple[str, Hashable], bytes] = {}
        self._encoded_index = 0

    # -- reads -------------------------------------------------------------------------

    def product(self, product_id: str) -> dict[str, Any] | None:
        p = self._products.get(product_id)
        return None if p is None else dict(p)

    def encoded(
        self,
        product_id: str,
        kind: Hashable,
        encode: Callable[[Mapping[str, Any], int], bytes],
    ) -> bytes | None:
        """``encode(product, index)`` for a cached product, computed once per ``kind``
        (e.g. an answer shape and path) until the cache changes; None when the product
        is not cached. ``encode`` must depend on nothing but its arguments and ``kind``."""
        if self._encoded_index != self.index:
            self._encoded.clear()
            self._encoded_index = self.index
        key = (product_id, kind)
        found = self._encoded.get(key)
        if found is None:
            p = self._products.get(product_id)
            if p is None:
                return None
            found = self._encoded[key] = encode(p, self.index)
        return found

    def products(self) -> list[dict[str, Any]]:
        return [dict(p) for _, p in sorted(self._products.items())]

    def available(self, product_id: str) -> int | None:
        p = self._products.get(product_id)
        if p is None:
            return None
        value = p.get("available")
        return value if isinstance(value, int) else None

    def per_user_limit(self, product_id: str) -> int | None:
        """The product's per-shopper limit, when cached."""
        p = self._products.get(product_id)
        value = None if p is None else p.get("per_user_limit")
        return value if isinstance(value, int) else None

    def is_sold_out(self, product_id: str) -> bool:
        """True when the cache knows the product and none of it is available."""
        return self.available(product_id) == 0

    def hold_key_seen(self, ledger_key: str) -> bool:
        """True when a hold was placed under this idempotency key (as far as remembered)."""
        return ledger_key in self._hold_keys

    # -- changes -----------------------------------------------------------------------

    def reset(self, snapshot: Mapping[str, Any]) -> None:
        """Replace everything with a snapshot view (``Ledger.snapshot_view()``)."""
        index = snapshot.get("index")
        if not isinstance(index, int):
            raise ValueError("feed snapshot without an integer index")
        products: dict[str, dict[str, Any]] = {}
        for p in snapshot.get("products") or []:
            if isinstance(p, dict) and isinstance(p.get("product_id"), str):
                products[p["product_id"]] = {k: v for k, v in p.items() if k in _PRODUCT_FIELDS}
        self._products = dict(list(products.items())[:MAX_PRODUCTS])
        self._encoded.clear()
        self.index = index
        self._last_seq = 2**62  # the whole entry at ``index`` is in the snapshot
        self.needs_details.clear()
        # Hold keys are not part of a snapshot: those remembered stay (still true).

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Fold one event in; False when it was already applied (or is malformed)."""
        index, seq = event.get("index"), event.get("seq")
        if not isinstance(index, int) or not isinstance(seq, int):
            return False
        if (index, seq) <= (self.index, self._last_seq):
            return False
        if index > self.index:
            self.index = index
        self._last_seq = seq
        kind = event.get("kind")
        if kind in _PRODUCT_EVENTS:
            self._apply_terms(event)
        for level in event.get("stock") or []:
            if isinstance(level, dict):
                self._apply_level(level)
        if kind == "hold_placed":
            key = event.get("key")
            if isinstance(key, str) and key:
                self._hold_keys[key] = None
                while len(self._hold_keys) > MAX_REMEMBERED_HOLD_KEYS:
                    self._hold_keys.popitem(last=False)
        return True

    def advance(self, index: int) -> None:
        """Entries up to ``index`` produced no further events: the cache reflects them."""
        if index > self.index:
            self.index = index
            self._last_seq = 2**62

    def set_details(self, product: Mapping[str, Any]) -> None:
        """Terms of a product read from a node (after an event without them)."""
        pid = product.get("product_id")
        if not isinstance(pid, str):
            return
        self.needs_details.discard(pid)
        known = self._products.get(pid)
        terms = {k: v for k, v in product.items() if k in _PRODUCT_FIELDS}
        if known is not None:
            # Stock levels from events are at least as new as this read's: keep them.
            terms.update({k: known[k] for k in _STOCK_FIELDS if k in known})
        self._store(pid, terms)

    def _apply_terms(self, event: Mapping[str, Any]) -> None:
        pid = event.get("product_id")
        data = event.get("data")
        terms: Mapping[str, Any] = {}
        if isinstance(data, dict):
            nested = data.get("product")
            terms = nested if isinstance(nested, dict) else data
        if not isinstance(pid, str) or not pid:
            pid = terms.get("product_id") if isinstance(terms.get("product_id"), str) else None
        if not pid:
            return
        merged = dict(self._products.get(pid, {"product_id": pid}))
        merged.update({k: v for k, v in terms.items() if k in _PRODUCT_FIELDS})
        merged["product_id"] = pid
        self._store(pid, merged)
        if "name" not in merged or "price_minor" not in merged:
            self.needs_details.add(pid)

    def _apply_level(self, level: Mapping[str, Any]) -> None:
        pid = level.get("product_id")
        if not isinstance(pid, str):
            return
        merged = dict(self._products.get(pid, {"product_id": pid}))
        for k in _STOCK_FIELDS:
            if isinstance(level.get(k), int):
                merged[k] = level[k]
        self._store(pid, merged)
        if "name" not in merged:
            self.needs_details.add(pid)

    def _store(self, pid: str, product: dict[str, Any]) -> None:
        if pid in self._products or len(self._products) < MAX_PRODUCTS:
            self._products[pid] = product
            self._encoded.clear()  # set_details changes a product at the same index


# -- the follower ----------------------------------------------------------------------

FeedFetch = Callable[[int, int, int], Awaitable[Mapping[str, Any]]]  # (from, limit, wait_ms)
ProductFetch = Callable[[str], Awaitable[Mapping[str, Any]]]  # product_id -> ProductView


@dataclass(slots=True)
class FollowerStatus:
    caught_up: bool = False
    # time.monotonic() of the latest feed answer (not the event loop's clock: a request
    # reads it without looking up the running loop, which showed in profiles)
    last_answer_at: float | None = None
    node_last_index: int = 0  # newest index the feed node reported (or the cache's)
    failures: int = 0  # consecutive failed requests


class FeedFollower:
    """Keeps an EdgeCache current from the feed; see the module docstring."""

    def __init__(
        self,
        cache: EdgeCache,
        fetch: FeedFetch,
        *,
        wait_ms: int,
        fetch_product: ProductFetch | None = None,
        metrics: GatewayMetrics | None = None,
        page_events: int = FEED_PAGE_EVENTS,
    ) -> None:
        self.cache = cache
        self._fetch = fetch
        self._fetch_product = fetch_product
        self._metrics = metrics
        self.wait_ms = wait_ms
        self.page_events = page_events
        self.status = FollowerStatus()

    def absorb(self, answer: Mapping[str, Any]) -> None:
        """Apply one feed answer: snapshot (if any), then events, then ``last_index``.

        A node's page holds whole ledger entries only, and ``last_index`` is the entry it
        ends with (or the request's ``from`` when nothing is newer): the cache reflects
        every entry up to it, including entries that produced no event.
        """
        snapshot = answer.get("snapshot")
        if isinstance(snapshot, dict):
            self.cache.reset(snapshot)
            if self._metrics is not None:
                self._metrics.feed_resets.inc()
        events = answer.get("events")
        events = events if isinstance(events, list) else []
        for event in events:
            if isinstance(event, dict):
                self.cache.apply(event)
        last = answer.get("last_index")
        if isinstance(last, int):
            self.cache.advance(last)
        head = answer.get("head")
        if isinstance(head, int):
            self.status.node_last_index = head
            self.status.caught_up = self.cache.index >= head
        else:
            # Without the node's head: a page well below the size limit was not cut
            # short, so nothing newer was waiting when it was read.
            self.status.node_last_index = self.cache.index
            self.status.caught_up = len(events) < self.page_events // 2
        if self._metrics is not None:
            self._metrics.cache_index.set(self.cache.index)
            self._metrics.cache_caught_up.set(1 if self.status.caught_up else 0)

    def ready(self, now: float) -> bool:
        """Caught up on an answer received recently enough to still be believed
        (``now``: time.monotonic())."""
        at = self.status.last_answer_at
        fresh = at is not None and now - at <= self.wait_ms / 1000 + STALE_AFTER_MARGIN_S
        return self.status.caught_up and fresh

    async def poll_once(self) -> None:
        answer = await self._fetch(self.cache.index, self.page_events, self.wait_ms)
        self.absorb(answer)
        self.status.last_answer_at = time.monotonic()
        self.status.failures = 0
        await self._fill_details()

    async def run(self) -> None:
        """Follow the feed until cancelled; a failed request moves on after a backoff."""
        backoff_s = BACKOFF_FIRST_S
        while True:
            try:
                await self.poll_once()
                backoff_s = BACKOFF_FIRST_S
            except (ClusterError, TimeoutError, ValueError, OSError) as exc:
                self.status.failures += 1
                self.status.caught_up = False
                if self._metrics is not None:
                    self._metrics.feed_errors.inc()
                    self._metrics.cache_caught_up.set(0)
                if self.status.failures == 1:
                    log.warning("feed request failed", extra={"error": str(exc)})
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _fill_details(self) -> None:
        if self._fetch_product is None:
            return
        for pid in sorted(self.cache.needs_details):
            try:
                answer = await self._fetch_product(pid)
            except ClusterError:
                continue  # the next answer retries
            product = answer.get("product")
            if isinstance(product, dict):
                self.cache.set_details(product)
