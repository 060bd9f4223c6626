"""The console's follower of the committed-event feed: orders per second, orders per shopper.

Theory of operation: ``FeedFollower.run`` long-polls ``GET /v1/feed`` on any node from
the last index it has seen. Each ``order_placed`` event counts in the second of its
``at_ms`` (the leader's clock), which gives the sale chart its orders per second, and
files the order under its shopper, which lets an operator search orders by shopper (the
node API only finds an order by id). When the node answers with a snapshot (the console
fell behind what the node retains), the shopper index is rebuilt from the snapshot's
orders and the events continue after it. Both structures are bounded (see admin.limits).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from typing import Any

from admin.cluster_port import ClusterPort
from admin.limits import CHART_POINTS, FEED_BATCH_EVENTS, FEED_WAIT_MS, MAX_INDEXED_ORDERS
from cluster.errors import ClusterError

log = logging.getLogger("admin.feed")

RETRY_PAUSE_S = 1.0  # after a failed feed request
ORDER_PLACED = "order_placed"


class OrderRate:
    """Orders placed per second of ledger time, for the last ``CHART_POINTS`` seconds seen."""

    def __init__(self) -> None:
        self._counts: OrderedDict[int, int] = OrderedDict()

    def add(self, at_ms: int) -> None:
        second = at_ms // 1000
        self._counts[second] = self._counts.get(second, 0) + 1
        if len(self._counts) > CHART_POINTS * 2:
            # Seconds arrive nearly in order; drop the oldest.
            for old in sorted(self._counts)[: len(self._counts) - CHART_POINTS]:
                del self._counts[old]

    def in_second(self, second: int) -> int:
        return self._counts.get(second, 0)


class ShopperIndex:
    """Shopper id -> their order ids, newest last, at most ``MAX_INDEXED_ORDERS`` in all."""

    def __init__(self, capacity: int = MAX_INDEXED_ORDERS) -> None:
        self._capacity = capacity
        self._by_user: dict[str, list[str]] = {}
        self._fifo: deque[tuple[str, str]] = deque()

    def add(self, user_id: str, order_id: str) -> None:
        if not user_id or not order_id:
            return
        orders = self._by_user.setdefault(user_id, [])
        if order_id in orders:
            return
        orders.append(order_id)
        self._fifo.append((user_id, order_id))
        while len(self._fifo) > self._capacity:
            old_user, old_order = self._fifo.popleft()
            kept = self._by_user.get(old_user, [])
            if old_order in kept:
                kept.remove(old_order)
            if not kept:
                self._by_user.pop(old_user, None)

    def reset(self, orders: Iterable[Mapping[str, Any]]) -> None:
        self._by_user.clear()
        self._fifo.clear()
        for order in sorted(orders, key=lambda o: int(o.get("created_at_ms") or 0)):
            self.add(str(order.get("user_id", "")), str(order.get("order_id", "")))

    def orders_of(self, user_id: str) -> list[str]:
        """The shopper's order ids, newest first."""
        return list(reversed(self._by_user.get(user_id, [])))

    def __len__(self) -> int:
        return len(self._fifo)


class FeedFollower:
    """Follows the feed into an ``OrderRate`` and a ``ShopperIndex``; see module docstring."""

    def __init__(self, cluster: ClusterPort) -> None:
        self._cluster = cluster
        self.last_index = 0
        self.rate = OrderRate()
        self.shoppers = ShopperIndex()
        self.connected = False

    def absorb(self, answer: Mapping[str, Any]) -> None:
        """Apply one feed answer (snapshot first, then events)."""
        snapshot = answer.get("snapshot")
        if isinstance(snapshot, dict):
            orders = snapshot.get("orders")
            self.shoppers.reset(orders if isinstance(orders, list) else [])
            index = snapshot.get("index")
            if isinstance(index, int):
                self.last_index = index
        events = answer.get("events")
        for event in events if isinstance(events, list) else []:
            if not isinstance(event, dict):
                continue
            if event.get("kind") == ORDER_PLACED:
                at_ms = event.get("at_ms")
                if isinstance(at_ms, int):
                    self.rate.add(at_ms)
                self.shoppers.add(str(event.get("user_id", "")), str(event.get("order_id", "")))
            index = event.get("index")
            if isinstance(index, int) and index > self.last_index:
                self.last_index = index
        last = answer.get("last_index")
        if isinstance(last, int) and last > self.last_index and not events:
            self.last_index = last

    async def poll_once(self) -> None:
        answer = await self._cluster.get(
            "/v1/feed",
            prefer_leader=False,
            params={"from": self.last_index, "limit": FEED_BATCH_EVENTS, "wait_ms": FEED_WAIT_MS},
            timeout_s=FEED_WAIT_MS / 1000 + 2.0,
        )
        self.absorb(answer)

    async def run(self) -> None:
        """Follow the feed until cancelled; failures pause and retry."""
        while True:
            try:
                await self.poll_once()
                self.connected = True
            except (ClusterError, ValueError) as exc:
                if self.connected:
                    log.warning("feed unavailable", extra={"error": str(exc)})
                self.connected = False
                await asyncio.sleep(RETRY_PAUSE_S)
