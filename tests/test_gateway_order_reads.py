"""gateway.order_reads against a real node application (one-node cluster, in process):
reads that wait together share one request, each caller gets its own order (or None),
a group never exceeds MAX_IDS_PER_READ ids, and a node without the batch route is read
one order at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cluster.errors import ClusterError, NotFound
from gateway.order_reads import MAX_IDS_PER_READ, OrderReads
from tests.test_node_api import PRODUCT, Api, reserve, start_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path):
        yield a


class NodeReads:
    """OrderReads' GET over the node's HTTP API, counting the requests it makes."""

    def __init__(self, api: Api, *, batch_route: bool = True) -> None:
        self.api = api
        self.batch_route = batch_route
        self.paths: list[str] = []
        self.gate: asyncio.Event | None = None  # when set: requests wait for it

    async def get(self, path: str) -> Mapping[str, Any]:
        self.paths.append(path)
        if self.gate is not None:
            await self.gate.wait()
        if not self.batch_route and path.startswith("/v1/orders?"):
            raise NotFound("an older node: no such route")
        status, body = await self.api.get(path)
        if status == 404:
            raise NotFound(str(body))
        if status != 200:
            raise ClusterError(f"HTTP {status}: {body}")
        return body


async def _orders(api: Api, count: int) -> list[str]:
    await api.post([PRODUCT])
    ids: list[str] = []
    for first in range(0, count, 100):
        n = range(first, min(count, first + 100))
        _, held = await api.post([reserve(i) for i in n])
        _, placed = await api.post([
            {"type": "checkout", "key": f"co{i}", "user_id": f"u{i}", "cart_id": h["cart_id"]}
            for i, h in zip(n, held["results"], strict=True)
        ])  # fmt: skip
        ids += [r["order_id"] for r in placed["results"]]
    return ids


async def test_reads_waiting_together_share_a_request_and_each_gets_its_own(api: Api) -> None:
    ids = await _orders(api, 30)
    node = NodeReads(api)
    reads = OrderReads(node.get)
    wanted = [*ids, "nope", ids[0]]
    got = await asyncio.gather(*(reads.read(i) for i in wanted))
    for order_id, order in zip(wanted, got, strict=True):
        if order_id == "nope":
            assert order is None
        else:
            assert order is not None and order["order_id"] == order_id
            assert order["user_id"] == f"u{ids.index(order_id)}"
            assert order["amount_minor"] == 2500 and order["status"] == "pending"
    # All 32 were queued before the reader ran: one request, the repeated id asked once.
    assert len(node.paths) == 1 and node.paths[0].count("id=") == 31
    # Reads arriving while a request is out go together in the next one.
    node.gate = asyncio.Event()
    first = asyncio.ensure_future(reads.read(ids[1]))
    while len(node.paths) < 2:
        await asyncio.sleep(0.001)  # the reader's request is out (held at the gate)
    later = [asyncio.ensure_future(reads.read(i)) for i in ids[2:5]]
    await asyncio.sleep(0.01)
    node.gate.set()
    assert (await first) is not None and all(await asyncio.gather(*later))
    assert node.paths[1:] == [f"/v1/orders?id={ids[1]}", f"/v1/orders?id={ids[2]}"
                              f"&id={ids[3]}&id={ids[4]}"]  # fmt: skip


async def test_a_group_holds_at_most_max_ids_per_read(api: Api) -> None:
    ids = await _orders(api, MAX_IDS_PER_READ + 50)
    node = NodeReads(api)
    reads = OrderReads(node.get)
    got = await asyncio.gather(*(reads.read(i) for i in ids))
    assert [o["order_id"] if o else None for o in got] == ids
    per_request = [p.count("id=") for p in node.paths]
    assert max(per_request) == MAX_IDS_PER_READ and sum(per_request) == len(ids)


async def test_a_node_without_the_batch_route_is_read_one_order_at_a_time(api: Api) -> None:
    ids = await _orders(api, 3)
    node = NodeReads(api, batch_route=False)
    reads = OrderReads(node.get)
    got = await asyncio.gather(*(reads.read(i) for i in [*ids, "nope"]))
    assert [o["order_id"] if o else None for o in got] == [*ids, None]
    assert f"/v1/orders/{ids[1]}" in node.paths


async def test_a_failed_request_fails_every_read_of_its_group_and_reads_go_on(api: Api) -> None:
    ids = await _orders(api, 2)
    node = NodeReads(api)
    failing = [True]

    async def get(path: str) -> Mapping[str, Any]:
        if failing.pop(0) if failing else False:
            raise ClusterError("no node answered")
        return await node.get(path)

    reads = OrderReads(get)
    with pytest.raises(ClusterError):
        await reads.read(ids[0])
    order = await reads.read(ids[1])
    assert order is not None and order["order_id"] == ids[1]
