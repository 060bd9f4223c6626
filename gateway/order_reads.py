"""Order reads from the leader for /payment, the reads that wait together in one request.

Theory of operation: every ``POST /payment`` reads its order from the leader (status,
amount and the count of recorded attempts decide what is charged, and under which
idempotency key). One HTTP round trip per payment cost the gateway about a sixth of its
CPU at a few hundred payments per second. ``OrderReads.read`` queues the order id; while
no read request is in flight, one starts with every id queued (``GET /v1/orders?id=..``,
at most ``MAX_IDS_PER_READ``); ids queued while it is out go together in the next one.
Under light load each read still goes alone at once; under heavy load (when the
saving matters) many share one request. Nothing is cached: every answer is the leader's
state read after the request for it arrived, exactly as a read of its own would be.

A node that does not know the batch route (an older node during a rolling upgrade)
answers 404: the reads of that group are then made one by one, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from cluster.errors import NotFound

MAX_IDS_PER_READ = 200  # the node's MAX_ORDERS_PER_READ
MAX_QUERY_BYTES = 6_000  # below aiohttp's 8,190-byte request line, path and all

Get = Callable[[str], Awaitable[Mapping[str, Any]]]  # GET path from the leader (NotFound: 404)
Order = Mapping[str, Any]


def _query_len(order_id: str) -> int:
    return len(urlencode({"id": order_id})) + 1  # and its "&"


class OrderReads:
    """Leader reads of orders, grouped while one is in flight; see the module docstring."""

    def __init__(self, get: Get) -> None:
        self._get = get
        self._queued: list[tuple[str, asyncio.Future[Order | None]]] = []
        self._reader: asyncio.Task[None] | None = None

    async def read(self, order_id: str) -> Order | None:
        """The order as the leader has it now, or None when the leader knows no such order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Order | None] = loop.create_future()
        self._queued.append((order_id, future))
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._drain(), name="order-reads")
        return await future

    def _next_group(self) -> list[tuple[str, asyncio.Future[Order | None]]]:
        size, taken = 0, 0
        for order_id, _ in self._queued:
            cost = _query_len(order_id)
            if taken == MAX_IDS_PER_READ or (taken and size + cost > MAX_QUERY_BYTES):
                break
            size += cost
            taken += 1
        group = self._queued[:taken]
        del self._queued[:taken]
        return group

    async def _drain(self) -> None:
        while self._queued:
            group = [(oid, f) for oid, f in self._next_group() if not f.done()]
            if not group:
                continue
            try:
                found = await self._read_group([oid for oid, _ in group])
            except Exception as exc:  # each caller gets what its own read would have raised
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # a caller that gave up must not warn
                continue
            except BaseException:  # the loop is going down: nobody may wait forever
                for _, future in [*group, *self._queued]:
                    future.cancel()
                self._queued.clear()
                raise
            for order_id, future in group:
                if not future.done():
                    future.set_result(found.get(order_id))

    async def _read_group(self, ids: list[str]) -> dict[str, Order]:
        unique = list(dict.fromkeys(ids))
        try:
            answer = await self._get("/v1/orders?" + urlencode([("id", i) for i in unique]))
        except NotFound:
            return await self._one_by_one(unique)  # a node without the batch route
        orders = answer.get("orders")
        if not isinstance(orders, list):
            raise ValueError("GET /v1/orders: answer without an orders list")
        return {o["order_id"]: o for o in orders if isinstance(o, dict) and "order_id" in o}

    async def _one_by_one(self, ids: list[str]) -> dict[str, Order]:
        found: dict[str, Order] = {}
        for order_id in ids:
            try:
                answer = await self._get(f"/v1/orders/{quote(order_id, safe='')}")
            except NotFound:
                continue
            order = answer.get("order")
            if isinstance(order, dict):
                found[order_id] = order
        return found
