"""The node's internal API, in process (one-node cluster): status codes and problem+json
as the contract says, authentication, body limits, reads, the feed, expiry."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cluster.auth import internal_token
from cluster.config import ClusterConfig
from ledger.limits import MAX_COMMANDS_PER_ENTRY
from node.api import MAX_ORDERS_PER_READ, MAX_REQUEST_BODY_BYTES, RUNTIME, make_app
from node.feed import MAX_FEED_PAGE_EVENTS
from tests.support.cluster import in_process_config

DEADLINE_S = 20.0
PROBLEM = "application/problem+json"


@dataclass
class Api:
    client: TestClient[Any, Any]
    config: ClusterConfig
    headers: dict[str, str]

    async def post(self, commands: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post(
            "/v1/commands", json={"commands": commands}, headers=self.headers, **kw
        )
        return resp.status, await resp.json(content_type=None)

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get(path, headers=self.headers)
        return resp.status, await resp.json(content_type=None)


async def start_api(tmp_path: Path, **kw: Any) -> AsyncIterator[Api]:
    config = in_process_config(tmp_path, **kw)
    app = make_app(config, "n1")
    async with TestClient(TestServer(app)) as client:
        api = Api(client, config, {"Authorization": f"Bearer {internal_token(config.secret)}"})
        deadline = time.monotonic() + DEADLINE_S
        while (await api.get("/v1/status"))[1]["role"] != "leader":
            assert time.monotonic() < deadline, "the single node never led"
            await asyncio.sleep(0.02)
        yield api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path, expire_period_ms=50, feed_retention_events=100):
        yield a


PRODUCT = {
    "type": "create_product",
    "key": "create-lamp",
    "product_id": "lamp",
    "name": "Lamp",
    "price_minor": 2500,
    "total_stock": 500,
}


def reserve(n: int, product: str = "lamp") -> dict[str, Any]:
    return {
        "type": "reserve",
        "key": f"r{n}",
        "user_id": f"u{n}",
        "product_id": product,
        "quantity": 1,
    }


async def test_a_batch_commits_as_one_entry_with_one_result_per_command(api: Api) -> None:
    status, body = await api.post([PRODUCT, reserve(1), reserve(2)])
    assert status == 200
    assert body["index"] == 1
    assert [r["type"] for r in body["results"]] == ["product_saved", "hold_placed", "hold_placed"]
    # A retry with the same keys gets the recorded results and changes nothing.
    again_status, again = await api.post([PRODUCT, reserve(1), reserve(2)])
    assert again_status == 200 and again["results"] == body["results"]
    _, product = await api.get("/v1/products/lamp")
    assert product["product"]["reserved"] == 2


async def test_an_undecodable_command_is_refused_by_position(api: Api) -> None:
    status, body = await api.post([PRODUCT, {"type": "reserve", "key": "r1", "quantity": 1}])
    assert status == 400
    assert body["type"].endswith("/invalid-command") and body["command_index"] == 1
    _, st = await api.get("/v1/status")
    assert st["ledger_index"] == 0  # nothing of the batch was proposed


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b'{"commands": []}', b'{"commands": "x"}'],
)
async def test_a_malformed_body_is_a_400_problem(api: Api, payload: bytes) -> None:
    resp = await api.client.post("/v1/commands", data=payload, headers=api.headers)
    assert resp.status == 400
    assert resp.content_type == PROBLEM


async def test_at_most_max_commands_per_entry(api: Api) -> None:
    status, body = await api.post([reserve(n) for n in range(MAX_COMMANDS_PER_ENTRY + 1)])
    assert status == 400 and str(MAX_COMMANDS_PER_ENTRY) in body["detail"]


async def test_request_body_size_is_limited(api: Api) -> None:
    huge = json.dumps({"commands": [{"type": "expire", "key": "x" * MAX_REQUEST_BODY_BYTES}]})
    body = io.BytesIO(huge.encode())
    resp = await api.client.post("/v1/commands", data=body, headers=api.headers)
    assert resp.status == 413
    assert resp.content_type == PROBLEM
    assert (await resp.json(content_type=None))["type"].endswith("/payload-too-large")


async def test_the_internal_token_is_required(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        resp = await api.client.get("/v1/status", headers=headers)
        assert resp.status == 401
        assert resp.content_type == PROBLEM
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        resp = await api.client.post("/v1/commands", json={"commands": [PRODUCT]}, headers=headers)
        assert resp.status == 401
    _, st = await api.get("/v1/status")
    assert st["ledger_index"] == 0


async def test_health_and_metrics_need_no_token(api: Api) -> None:
    await api.post([PRODUCT, reserve(1)])
    health = await api.client.get("/healthz")
    assert health.status == 200 and await health.json() == {"ok": True}
    metrics = await api.client.get("/metrics")
    text = await metrics.text()
    assert metrics.status == 200
    assert "flashsale_node_commits_total 1.0" in text
    assert 'flashsale_node_role{role="leader"} 1.0' in text
    assert "flashsale_node_batch_commands_bucket" in text
    assert "flashsale_node_journal_sync_seconds_count" in text


async def test_reads_of_products_holds_carts_orders(api: Api) -> None:
    _, body = await api.post([PRODUCT, reserve(1)])
    hold = body["results"][1]
    _, checkout = await api.post(
        [{"type": "checkout", "key": "co1", "user_id": "u1", "cart_id": hold["cart_id"]}]
    )
    order_id = checkout["results"][0]["order_id"]
    status, products = await api.get("/v1/products")
    assert status == 200 and [p["product_id"] for p in products["products"]] == ["lamp"]
    status, got = await api.get(f"/v1/holds/{hold['hold_id']}")
    assert status == 200 and got["hold"]["status"] == "ordered" and got["index"] == 2
    status, cart = await api.get(f"/v1/carts/{hold['cart_id']}")
    assert status == 200 and [h["hold_id"] for h in cart["cart"]["holds"]] == [hold["hold_id"]]
    status, order = await api.get(f"/v1/orders/{order_id}")
    assert status == 200 and order["order"]["amount_minor"] == 2500
    for path in ("/v1/products/nope", "/v1/holds/nope", "/v1/carts/nope", "/v1/orders/nope"):
        status, problem = await api.get(path)
        assert status == 404 and problem["type"].endswith("/not-found")


async def test_orders_are_read_together_by_id(api: Api) -> None:
    _, body = await api.post([PRODUCT, reserve(1), reserve(2)])
    carts = [body["results"][1]["cart_id"], body["results"][2]["cart_id"]]
    _, placed = await api.post([
        {"type": "checkout", "key": f"co{n}", "user_id": f"u{n}", "cart_id": cart}
        for n, cart in enumerate(carts, start=1)
    ])  # fmt: skip
    o1, o2 = (r["order_id"] for r in placed["results"])
    status, got = await api.get(f"/v1/orders?id={o2}&id=nope&id={o1}&id={o2}")
    assert status == 200 and got["index"] == 2
    assert [(o["order_id"], o["user_id"]) for o in got["orders"]] == [(o2, "u2"), (o1, "u1")]
    too_many = "&".join(f"id=o{n}" for n in range(MAX_ORDERS_PER_READ + 1))
    for query in ("", "?id=", "?" + too_many):
        status, problem = await api.get("/v1/orders" + query)
        assert status == 400 and problem["type"].endswith("/invalid-request"), query
    status, got = await api.get("/v1/orders?" + too_many.rsplit("&", 1)[0])
    assert status == 200 and len(got["orders"]) == 2


async def test_status_reports_the_raft_and_ledger_state(api: Api) -> None:
    await api.post([PRODUCT])
    status, st = await api.get("/v1/status")
    assert status == 200
    assert st["id"] == "n1" and st["role"] == "leader" and st["leader"]["id"] == "n1"
    assert st["ledger_index"] == 1 and st["commit_index"] >= 2 and st["durability"] == "fsync"
    assert st["digest"] is None and st["partners"] == []  # the digest only on request
    _, with_digest = await api.get("/v1/status?digest=1")
    assert len(with_digest["digest"]) == 64


async def test_feed_serves_ordered_events_and_long_polls(api: Api) -> None:
    await api.post([PRODUCT, reserve(1)])
    await api.post([reserve(2)])
    status, page = await api.get("/v1/feed?from=0")
    assert status == 200 and page["snapshot"] is None and page["last_index"] == 2
    order = [(e["index"], e["seq"]) for e in page["events"]]
    assert order == sorted(order) and order[0] == (1, 0)
    waiting = asyncio.create_task(api.get("/v1/feed?from=2&wait_ms=10000"))
    deadline = time.monotonic() + DEADLINE_S
    while (await api.get("/v1/status"))[1]["feed"]["waiters"] != 1:
        assert time.monotonic() < deadline, "the long-poll never started waiting"
        await asyncio.sleep(0.01)
    assert not waiting.done()
    await api.post([reserve(3)])
    _, woken = await asyncio.wait_for(waiting, 5.0)
    assert woken["last_index"] == 3
    assert {e["key"] for e in woken["events"]} == {"r3"}
    _, empty = await api.get("/v1/feed?from=3&wait_ms=50")
    assert empty["events"] == [] and empty["last_index"] == 3


async def test_feed_reader_behind_retention_starts_from_a_snapshot(api: Api) -> None:
    await api.post([PRODUCT])
    await api.post([reserve(n) for n in range(150)])  # more events than the ring keeps (100)
    _, page = await api.get("/v1/feed?from=0")
    snapshot = page["snapshot"]
    assert snapshot is not None and snapshot["index"] == 2 == page["last_index"]
    assert snapshot["products"][0]["reserved"] == 150


@pytest.mark.parametrize(
    "query",
    ["limit=0", f"limit={MAX_FEED_PAGE_EVENTS + 1}", "from=-1", "wait_ms=30001", "from=x"],
)
async def test_feed_parameters_are_checked(api: Api, query: str) -> None:
    status, body = await api.get(f"/v1/feed?{query}")
    assert status == 400 and body["type"].endswith("/invalid-request")


async def test_a_due_hold_expires_with_no_other_traffic(api: Api) -> None:
    _, body = await api.post([{**PRODUCT, "hold_ttl_ms": 1000}, reserve(1)])
    hold_id = body["results"][1]["hold_id"]
    deadline = time.monotonic() + DEADLINE_S
    while (await api.get(f"/v1/holds/{hold_id}"))[1]["hold"]["status"] != "expired":
        assert time.monotonic() < deadline, "the hold never expired"
        await asyncio.sleep(0.05)
    _, product = await api.get("/v1/products/lamp")
    assert product["product"]["available"] == 500 and product["product"]["reserved"] == 0


async def test_the_leader_brings_ledger_settings_to_the_config(tmp_path: Path) -> None:
    async for api in start_api(tmp_path, ledger={"payment_ttl_s": 120, "retention_s": 7200}):
        services = api.client.app[RUNTIME].services  # type: ignore[index]
        assert services is not None
        deadline = time.monotonic() + DEADLINE_S
        while services.raft.settings().payment_ttl_ms != 120_000:
            assert time.monotonic() < deadline, "settings never reached the ledger"
            await asyncio.sleep(0.05)
        assert services.raft.settings().retention_ms == 7_200_000
