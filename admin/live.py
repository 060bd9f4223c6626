"""The live picture the console pushes to every open page, once a second.

Theory of operation: one background task (``LiveHub.run``, started by a cleanup context)
reads, every ``LIVE_PERIOD_MS``, every node's status, the products (stock levels) and
every gateway's /metrics, and builds one JSON snapshot: the cluster rows, the gateway
rows with request rates, the products, and a chart sample (each product's available /
reserved / sold and the orders placed in the last complete second, from the feed
follower). The last ``CHART_POINTS`` samples are kept so a page that opens mid-sale
draws its chart at once. Each open Server-Sent-Events stream is a subscriber with a
one-slot mailbox: a slow browser gets the newest snapshot, never a growing backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from admin.cluster_port import ClusterPort
from admin.cluster_view import (
    GatewayReading,
    GatewayRow,
    leader_id,
    member_ids,
    node_rows,
    rate_per_s,
    request_total,
)
from admin.feed import FeedFollower
from admin.limits import CHART_POINTS, LIVE_PERIOD_MS, MAX_SSE_SUBSCRIBERS, STATUS_TIMEOUT_MS
from admin.money import from_minor
from cluster.config import ClusterConfig
from cluster.errors import ClusterError

log = logging.getLogger("admin.live")

Snapshot = dict[str, Any]
MAX_CHART_PRODUCTS = 50  # products carried in each chart sample (the first by id)


class TooManySubscribers(RuntimeError):
    """``MAX_SSE_SUBSCRIBERS`` live streams are open already."""


def product_json(product: dict[str, Any]) -> dict[str, Any]:
    """A product as the pages show it: the ledger's view plus the price as text."""
    currency = str(product.get("currency", "USD"))
    price_minor = product.get("price_minor")
    out = dict(product)
    if isinstance(price_minor, int):
        try:
            out["price"] = from_minor(price_minor, currency)
        except ValueError:
            out["price"] = str(price_minor)
    return out


class Subscriber:
    def __init__(self) -> None:
        self._mailbox: asyncio.Queue[Snapshot | None] = asyncio.Queue(maxsize=1)

    def offer(self, snapshot: Snapshot | None) -> None:
        """Replace whatever is waiting with ``snapshot`` (None: the stream must end)."""
        with contextlib.suppress(asyncio.QueueEmpty):
            self._mailbox.get_nowait()
        self._mailbox.put_nowait(snapshot)

    async def next(self) -> Snapshot | None:
        return await self._mailbox.get()


class LiveHub:
    """Polls the cluster and fans snapshots out to subscribers; see module docstring."""

    def __init__(
        self,
        config: ClusterConfig,
        cluster: ClusterPort,
        http: aiohttp.ClientSession,
        feed: FeedFollower,
        clock_ms: Callable[[], int],
    ) -> None:
        self._config = config
        self._cluster = cluster
        self._http = http
        self._feed = feed
        self._clock_ms = clock_ms
        self._subscribers: set[Subscriber] = set()
        self._gateway_readings: dict[str, GatewayReading] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=CHART_POINTS)
        self.latest: Snapshot | None = None
        self._closed = False

    # -- subscribers -------------------------------------------------------------------

    def subscribe(self) -> Subscriber:
        """A new subscriber; TooManySubscribers at the limit or during shutdown.
        The caller must ``unsubscribe`` it (in a ``finally``)."""
        if self._closed:
            raise TooManySubscribers("the console is shutting down")
        if len(self._subscribers) >= MAX_SSE_SUBSCRIBERS:
            raise TooManySubscribers(f"{MAX_SSE_SUBSCRIBERS} live streams are open already")
        sub = Subscriber()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every stream (shutdown): each subscriber gets None."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.offer(None)

    # -- polling -----------------------------------------------------------------------

    async def _status(self, node_id: str) -> dict[str, Any] | None:
        """One node's /v1/status, asked of that node alone with the console's own timeout
        (a paused node must not hold up the others' rows)."""
        try:
            return await self._cluster.get(
                "/v1/status", node_id=node_id, timeout_s=STATUS_TIMEOUT_MS / 1000
            )
        except (TimeoutError, ClusterError):
            return None

    async def _statuses(self) -> dict[str, dict[str, Any] | None]:
        ids = [n.id for n in self._config.nodes]
        found = await asyncio.gather(*(self._status(i) for i in ids))
        return dict(zip(ids, found, strict=True))

    async def _products(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        try:
            answer = await self._cluster.get("/v1/products", timeout_s=STATUS_TIMEOUT_MS / 1000)
        except (TimeoutError, ClusterError) as exc:
            return None, str(exc)
        products = answer.get("products")
        if not isinstance(products, list):
            return None, "node answered without products"
        rows = [product_json(p) for p in products if isinstance(p, dict)]
        rows.sort(key=lambda p: str(p.get("product_id", "")))
        return rows, None

    async def _gateway(self, gateway_id: str, url: str) -> GatewayReading:
        try:
            async with self._http.get(
                url, timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT_MS / 1000)
            ) as resp:
                if resp.status != 200:
                    return GatewayReading(None, self._clock_ms(), True)
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError):
            return GatewayReading(None, self._clock_ms(), False)
        return GatewayReading(request_total(text), self._clock_ms(), True)

    async def _gateways(self) -> list[GatewayRow]:
        gws = self._config.gateways
        readings = await asyncio.gather(
            *(self._gateway(g.id, f"{g.listen.url}/metrics") for g in gws)
        )
        rows = []
        for gw, reading in zip(gws, readings, strict=True):
            rate = rate_per_s(self._gateway_readings.get(gw.id), reading)
            if reading.requests_total is not None:
                self._gateway_readings[gw.id] = reading
            rows.append(GatewayRow(gw.id, str(gw.listen), reading.up, reading.requests_total, rate))
        return rows

    async def poll_once(self) -> Snapshot:
        """Read the cluster once, record the chart sample, publish the snapshot."""
        statuses, (products, products_error), gateways = await asyncio.gather(
            self._statuses(), self._products(), self._gateways()
        )
        now_ms = self._clock_ms()
        if products is None and self.latest is not None:
            products = list(self.latest["products"])  # keep showing the last known stock
        products = products or []
        sample = {
            "t_ms": now_ms,
            "orders_per_s": self._feed.rate.in_second(now_ms // 1000 - 1),
            "stock": {
                str(p["product_id"]): [p.get("available"), p.get("reserved"), p.get("sold")]
                for p in products[:MAX_CHART_PRODUCTS]
            },
        }
        self.history.append(sample)
        snapshot: Snapshot = {
            "at_ms": now_ms,
            "leader": leader_id(statuses),
            "nodes": [row.as_json() for row in node_rows(self._config, statuses)],
            "members": _members(statuses),
            "gateways": [row.as_json() for row in gateways],
            "products": products,
            "products_error": products_error,
            "feed_connected": self._feed.connected,
            "sample": sample,
        }
        self.latest = snapshot
        for sub in list(self._subscribers):
            sub.offer(snapshot)
        return snapshot

    async def run(self) -> None:
        """Poll every ``LIVE_PERIOD_MS`` until cancelled."""
        period_s = LIVE_PERIOD_MS / 1000
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:
                # A bug here must not stop the live view for good: log it, go on.
                log.exception("live poll failed")
            await asyncio.sleep(max(0.05, period_s - (time.monotonic() - started)))


def _members(statuses: Mapping[str, Mapping[str, Any] | None]) -> list[str] | None:
    """The member ids the leader lists, sorted; None without a leader or a list."""
    lead = leader_id(statuses)
    found = member_ids(statuses.get(lead) if lead is not None else None)
    return None if found is None else sorted(found)
