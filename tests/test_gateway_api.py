"""The shopper API through real HTTP (aiohttp test server), on an in-process ledger.

The gateway is the real application of ``gateway.server.create_app``; only the cluster
behind it is replaced by a real ``Ledger`` in this process (``InProcessCluster``), so
these tests need no Raft. The multi-process tests are in test_gateway_cluster.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from cluster.client import SubmitResult
from cluster.config import ClusterConfig, NodeConfig, build_config
from cluster.errors import CommitUnknown, NoLeader, NotFound
from gateway.identity import issue_token
from gateway.openapi import openapi_document
from gateway.problems import PROBLEM_BASE
from gateway.server import create_app
from gateway.state import STATE
from ledger import Ledger
from ledger.codec import encode_event, encode_result, encode_view
from pii import gateway as pii_gateway
from pii.keystore import KeyStore
from pii.sealing import Unsealer

SECRET = "api-test-secret"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _config(tmp_path: Path, **gateway: Any) -> ClusterConfig:
    return build_config(
        {
            "cluster": {"secret": SECRET},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [{"id": "g1", "listen": "127.0.0.1:3"}],
            "bots": {"enabled": False},
            "gateway": {"feed_wait_ms": 100, **gateway},
        },
        tmp_path,
    )


class InProcessCluster:
    """A ClusterPort over one real Ledger: submits apply at once, reads are local."""

    def __init__(self, config: ClusterConfig) -> None:
        self.ledger = Ledger()
        self.chunks: dict[int, list[dict[str, Any]]] = {}
        self.leader_node: NodeConfig | None = config.nodes[0]
        self.batches: list[list[dict[str, Any]]] = []
        self.fail_next: list[Exception] = []
        self.apply_then_fail: list[Exception] = []  # applied, but the answer is lost
        self.submit_delay_s = 0.0
        self.paths: list[str] = []

    @property
    def commands_submitted(self) -> int:
        return sum(len(b) for b in self.batches)

    def apply(self, commands: list[dict[str, Any]]) -> SubmitResult:
        applied = self.ledger.apply_encoded(int(time.time() * 1000), commands)
        self.chunks[applied.index] = [dict(encode_event(e)) for e in applied.events]
        return SubmitResult(applied.index, [dict(encode_result(r)) for r in applied.results])

    async def submit(
        self, commands: list[dict[str, Any]], *, deadline_s: float = 10.0
    ) -> SubmitResult:
        self.batches.append(list(commands))
        if self.submit_delay_s:
            await asyncio.sleep(self.submit_delay_s)
        if self.fail_next:
            raise self.fail_next.pop(0)
        result = self.apply(commands)
        if self.apply_then_fail:
            raise self.apply_then_fail.pop(0)
        return result

    async def leader(self) -> NodeConfig | None:
        return self.leader_node

    async def get(
        self,
        path: str,
        *,
        prefer_leader: bool = True,
        params: Mapping[str, str | int] | None = None,
        node_id: str | None = None,
        timeout_s: float | None = None,
        leader_only: bool = False,
    ) -> dict[str, Any]:
        led = self.ledger
        self.paths.append(path)
        parts = path.strip("/").split("/")
        if path == "/v1/feed":
            assert params is not None
            start = int(params["from"])
            if start >= led.index:
                await asyncio.sleep(min(int(params["wait_ms"]), 50) / 1000)
            events = [e for i in sorted(self.chunks) if i > start for e in self.chunks[i]]
            return {"events": events, "last_index": led.index, "snapshot": None}
        if path == "/v1/products":
            return {"index": led.index, "products": [encode_view(p) for p in led.products()]}
        if path.startswith("/v1/orders?"):
            ids = parse_qs(path.split("?", 1)[1])["id"]
            found = [o for i in ids if (o := led.order(i)) is not None]
            return {"index": led.index, "orders": [encode_view(o) for o in found]}
        assert len(parts) == 3, path  # /v1/{kind}/{quoted id}
        kind, thing_id = parts[1], unquote(parts[2])
        if kind == "products" and (p := led.product(thing_id)) is not None:
            return {"index": led.index, "product": encode_view(p)}
        if kind == "holds" and (h := led.hold(thing_id)) is not None:
            return {"index": led.index, "hold": encode_view(h)}
        if kind == "carts" and (c := led.cart(thing_id)) is not None:
            cart = dict(encode_view(c))
            cart["holds"] = [encode_view(h) for h in led.holds_of_cart(thing_id)]
            return {"index": led.index, "cart": cart}
        if kind == "orders" and (o := led.order(thing_id)) is not None:
            return {"index": led.index, "order": encode_view(o)}
        raise NotFound(f"no {path}")

    async def close(self) -> None:
        return None


class Shop:
    """The test client plus what tests need to reach behind it."""

    def __init__(self, client: TestClient[Any, Any], cluster: InProcessCluster) -> None:
        self.client = client
        self.cluster = cluster
        self.state = client.server.app[STATE]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(SECRET, user, 600)}"}

    def create(self, pid: str, stock: int, **extra: Any) -> None:
        result = self.cluster.apply(
            [{"type": "create_product", "key": f"create-{pid}", "product_id": pid,
              "name": f"Product {pid}", "price_minor": 1999, "total_stock": stock, **extra}]
        )
        assert result.results[0]["ok"], result.results[0]

    async def synced(self) -> None:
        """Wait until the edge cache reflects everything the ledger applied."""
        async with asyncio.timeout(5):
            while not (
                self.state.cache.index >= self.cluster.ledger.index
                and self.state.follower.ready(asyncio.get_running_loop().time())
            ):
                await asyncio.sleep(0.005)

    async def reserve(
        self, user: str, pid: str, quantity: int = 1, *, key: str | None = None,
        path: str = "/add-to-cart",
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        headers = self.auth(user)
        if key is not None:
            headers["Idempotency-Key"] = key
        resp = await self.client.post(
            path, json={"user_id": user, "product_id": pid, "quantity": quantity}, headers=headers
        )
        return resp.status, await resp.json(content_type=None), resp.headers

    async def checkout(
        self, user: str, cart_id: str, **change: Any
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        body = {"user_id": user, "cart_id": cart_id, "payment_method": "pm_card_visa",
                "shipping_address": {"address_line1": "1 Main St", "city": "Springfield",
                                     "postal_code": "12345", "country": "US"}, **change}
        resp = await self.client.post("/checkout", json=body, headers=self.auth(user))
        return resp.status, await resp.json(content_type=None), resp.headers


async def _shop(tmp_path: Path, **gateway: Any) -> AsyncIterator[Shop]:
    config = _config(tmp_path, **gateway)
    cluster = InProcessCluster(config)
    app = create_app(config, "g1", cluster=cluster)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Shop(client, cluster)
    finally:
        await client.close()


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    async for s in _shop(tmp_path):
        yield s


def _is_problem(status: int, body: dict[str, Any], expected: int, slug: str) -> bool:
    return status == expected and body["type"] == PROBLEM_BASE + slug and body["status"] == status


# -- add-to-cart / reserve-inventory -----------------------------------------------


async def test_add_to_cart_holds_units_and_answers_the_documented_shape(shop: Shop) -> None:
    shop.create("p1", 5)
    status, body, headers = await shop.reserve("alice", "p1", 2)
    assert status == 200, body
    assert body["success"] is True
    assert body["cart_id"] and body["hold_id"]
    assert RFC3339_UTC.match(body["reservation_expiry"])
    assert body["expires_at_ms"] > time.time() * 1000
    assert headers["Idempotency-Key"]
    assert int(headers["X-Ledger-Index"]) == body["ledger_index"]
    product = shop.cluster.ledger.product("p1")
    assert product is not None and product.available == 3


async def test_reserve_inventory_holds_units_too(shop: Shop) -> None:
    shop.create("p1", 5)
    status, body, _ = await shop.reserve("alice", "p1", path="/reserve-inventory")
    assert status == 200
    assert body["success"] is True and RFC3339_UTC.match(body["reservation_expiry"])


async def test_writes_need_a_valid_token(shop: Shop) -> None:
    shop.create("p1", 5)
    body = {"user_id": "alice", "product_id": "p1", "quantity": 1}
    resp = await shop.client.post("/add-to-cart", json=body)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json(content_type=None))["type"] == PROBLEM_BASE + "unauthorized"
    forged = issue_token("wrong-secret", "alice", 600)
    resp = await shop.client.post(
        "/add-to-cart", json=body, headers={"Authorization": f"Bearer {forged}"}
    )
    assert resp.status == 401
    assert shop.cluster.commands_submitted == 0


async def test_a_body_for_another_user_is_forbidden(shop: Shop) -> None:
    shop.create("p1", 5)
    resp = await shop.client.post(
        "/add-to-cart",
        json={"user_id": "bob", "product_id": "p1", "quantity": 1},
        headers=shop.auth("alice"),
    )
    body = await resp.json(content_type=None)
    assert _is_problem(resp.status, body, 403, "user-mismatch")
    assert shop.cluster.commands_submitted == 0


async def test_a_retry_with_the_same_key_returns_the_same_hold(shop: Shop) -> None:
    shop.create("p1", 5)
    first = await shop.reserve("alice", "p1", key="try-1")
    again = await shop.reserve("alice", "p1", key="try-1")
    assert first[0] == again[0] == 200
    assert first[1]["hold_id"] == again[1]["hold_id"]
    assert first[1]["cart_id"] == again[1]["cart_id"]
    product = shop.cluster.ledger.product("p1")
    assert product is not None and product.available == 4
    # The same key from another shopper is another request.
    other = await shop.reserve("bob", "p1", key="try-1")
    assert other[0] == 200 and other[1]["hold_id"] != first[1]["hold_id"]


async def test_without_a_key_each_request_is_new(shop: Shop) -> None:
    shop.create("p1", 5)
    a, b = await shop.reserve("alice", "p1"), await shop.reserve("alice", "p1")
    assert a[1]["hold_id"] != b[1]["hold_id"]
    assert a[2]["Idempotency-Key"] != b[2]["Idempotency-Key"]


async def test_a_key_reused_for_another_request_is_refused(shop: Shop) -> None:
    shop.create("p1", 5)
    await shop.reserve("alice", "p1", 1, key="k")
    status, body, headers = await shop.reserve("alice", "p1", 2, key="k")
    assert _is_problem(status, body, 422, "key-reused")
    assert headers["Idempotency-Key"] == "k"


async def test_a_bad_idempotency_key_is_refused(shop: Shop) -> None:
    shop.create("p1", 5)
    status, body, _ = await shop.reserve("alice", "p1", key="k" * 129)
    assert _is_problem(status, body, 422, "invalid-input")
    assert body["field"] == "Idempotency-Key"


async def test_sale_rules_are_problems(shop: Shop) -> None:
    future = int(time.time() * 1000) + 3_600_000
    shop.create("later", 5, opens_at_ms=future)
    shop.create("limited", 5, per_user_limit=1)
    status, body, _ = await shop.reserve("alice", "later")
    assert _is_problem(status, body, 409, "not-open")
    status, body, _ = await shop.reserve("alice", "nope")
    assert _is_problem(status, body, 404, "unknown-product")
    assert (await shop.reserve("alice", "limited"))[0] == 200
    status, body, _ = await shop.reserve("alice", "limited")
    assert _is_problem(status, body, 409, "limit-reached")


async def test_quantity_above_the_per_user_limit_is_refused_at_the_edge(shop: Shop) -> None:
    shop.create("limited", 5, per_user_limit=2)
    await shop.synced()
    before = shop.cluster.commands_submitted
    status, body, _ = await shop.reserve("alice", "limited", 3)
    assert _is_problem(status, body, 422, "invalid-input")
    assert body["field"] == "quantity"
    assert shop.cluster.commands_submitted == before


# -- sold out and the edge cache ---------------------------------------------------


async def test_sold_out_is_refused_by_the_cache_and_lifted_by_a_release(shop: Shop) -> None:
    shop.create("p1", 1)
    status, held, _ = await shop.reserve("alice", "p1")
    assert status == 200
    # The leader refuses while the cache may not know yet.
    status, body, _ = await shop.reserve("bob", "p1")
    assert _is_problem(status, body, 409, "sold-out")
    await shop.synced()
    resp = await shop.client.get("/inventory/p1")
    assert (await resp.json())["available_quantity"] == 0

    before = shop.cluster.commands_submitted
    status, body, headers = await shop.reserve("carol", "p1")
    assert _is_problem(status, body, 409, "sold-out")
    assert body["source"] == "edge-cache"
    assert int(headers["X-Ledger-Index"]) == shop.state.cache.index
    assert shop.cluster.commands_submitted == before  # never reached the leader
    assert shop.state.metrics.sold_out_short_circuits.value == 1

    # A retry of alice's accepted hold still reaches the leader and gets its answer.
    resp = await shop.client.delete(
        f"/cart/{held['cart_id']}/items/{held['hold_id']}", headers=shop.auth("alice")
    )
    assert resp.status == 200, await resp.text()
    await shop.synced()
    resp = await shop.client.get("/inventory/p1")
    assert (await resp.json())["available_quantity"] == 1
    status, body, _ = await shop.reserve("carol", "p1")
    assert status == 200, body


async def test_a_retry_of_an_accepted_hold_is_not_refused_by_the_cache(shop: Shop) -> None:
    shop.create("p1", 1)
    first = await shop.reserve("alice", "p1", key="once")
    await shop.synced()
    assert shop.state.cache.is_sold_out("p1")
    again = await shop.reserve("alice", "p1", key="once")
    assert again[0] == 200 and again[1]["hold_id"] == first[1]["hold_id"]


# -- checkout, carts, orders ---------------------------------------------------------


async def test_checkout_places_an_order_the_shopper_can_read(shop: Shop) -> None:
    shop.create("p1", 5)
    _, held, _ = await shop.reserve("alice", "p1", 2)
    status, order, headers = await shop.checkout("alice", held["cart_id"])
    assert status == 200, order
    assert order["payment_status"] == "pending"
    assert order["inventory_status"] == "confirmed"
    assert order["amount"] == "39.98" and order["amount_minor"] == 3998
    assert RFC3339_UTC.match(order["pay_by"])
    assert headers["Idempotency-Key"]

    resp = await shop.client.get(f"/orders/{order['order_id']}", headers=shop.auth("alice"))
    seen = await resp.json()
    assert resp.status == 200
    assert seen["order_id"] == order["order_id"] and seen["status"] == "pending"
    assert "sealed_details" not in seen and "Main St" not in await resp.text()

    # The ledger carries the address only sealed: ciphertext that the key store opens.
    stored = shop.cluster.ledger.order(order["order_id"])
    assert stored is not None and stored.payment_method == "pm_card_visa"
    assert stored.sealed_details.startswith("v1.")
    assert "Springfield" not in stored.sealed_details and "Main St" not in stored.sealed_details
    keys = KeyStore.open(shop.state.config)
    try:
        opened = Unsealer(keys).unseal(stored.sealed_details)
    finally:
        keys.close()
    assert opened.user_id == "alice"
    assert opened.details["shipping_address"] == {
        "address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
        "country": "US",
    }


async def test_a_placed_hold_makes_the_shoppers_data_key_before_checkout(shop: Shop) -> None:
    loader = pii_gateway._loader
    assert loader is not None
    shop.create("p1", 1)
    status, held, _ = await shop.reserve("alice", "p1")
    assert status == 200
    async with asyncio.timeout(5):  # made in the background, after the answer
        while loader.sealer.cached_key("alice") is None:
            await asyncio.sleep(0.005)
    keys = KeyStore.open(shop.state.config)
    try:
        stored = keys.current("alice")
    finally:
        keys.close()
    assert stored is not None and stored == loader.sealer.cached_key("alice")  # durable first
    groups = loader.groups
    status, order, _ = await shop.checkout("alice", held["cart_id"])
    assert status == 200, order
    assert loader.groups == groups  # the checkout sealed with the cached key: no store trip
    assert order["order_id"]

    await shop.synced()
    status, refused, _ = await shop.reserve("bob", "p1")  # sold out: no hold, no key
    assert status == 409, refused
    await asyncio.sleep(0.05)
    assert loader.sealer.cached_key("bob") is None and loader.groups == groups


async def test_a_failing_key_warm_up_does_not_fail_the_hold(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(user_id: str) -> bool:
        raise RuntimeError("key store in trouble")

    monkeypatch.setattr(pii_gateway, "prefetch_key", broken)
    shop.create("p1", 2)
    with caplog.at_level(logging.WARNING, logger="gateway.pii"):
        status, held, headers = await shop.reserve("alice", "p1", key="hold-1")
    assert status == 200, held
    assert held["hold_id"] and headers["Idempotency-Key"] == "hold-1"
    assert "preparing a data key failed" in caplog.text
    assert shop.cluster.ledger.product("p1").reserved == 1  # type: ignore[union-attr]


async def test_another_shopper_cannot_tell_an_order_or_cart_exists(shop: Shop) -> None:
    shop.create("p1", 5)
    _, held, _ = await shop.reserve("alice", "p1")
    _, order, _ = await shop.checkout("alice", held["cart_id"])
    for path, unknown in [
        (f"/orders/{order['order_id']}", "/orders/o999"),
        (f"/cart/{held['cart_id']}", "/cart/c999"),
    ]:
        theirs = await shop.client.get(path, headers=shop.auth("mallory"))
        missing = await shop.client.get(unknown, headers=shop.auth("mallory"))
        assert theirs.status == missing.status == 404
        a, b = await theirs.json(content_type=None), await missing.json(content_type=None)
        assert a["type"] == b["type"]
        assert "alice" not in await theirs.text()
    # Nor check out someone else's cart.
    status, body, _ = await shop.checkout("mallory", held["cart_id"])
    assert _is_problem(status, body, 404, "unknown-cart")


async def test_reads_need_a_token(shop: Shop) -> None:
    resp = await shop.client.get("/cart/c1")
    assert resp.status == 401
    resp = await shop.client.get("/orders/o1")
    assert resp.status == 401


async def test_cart_lists_its_holds(shop: Shop) -> None:
    shop.create("p1", 5)
    shop.create("p2", 5)
    _, a, _ = await shop.reserve("alice", "p1")
    _, b, _ = await shop.reserve("alice", "p2", 2)
    assert a["cart_id"] == b["cart_id"]
    resp = await shop.client.get(f"/cart/{a['cart_id']}", headers=shop.auth("alice"))
    cart = await resp.json()
    assert resp.status == 200
    assert {(i["hold_id"], i["quantity"]) for i in cart["items"]} == {
        (a["hold_id"], 1), (b["hold_id"], 2)
    }
    assert all(i["status"] == "active" for i in cart["items"])


async def test_release_checks_owner_and_cart(shop: Shop) -> None:
    shop.create("p1", 5)
    _, held, _ = await shop.reserve("alice", "p1")
    path = f"/cart/{held['cart_id']}/items/{held['hold_id']}"
    resp = await shop.client.delete(path, headers=shop.auth("mallory"))
    assert resp.status == 404
    resp = await shop.client.delete(
        f"/cart/c999/items/{held['hold_id']}", headers=shop.auth("alice")
    )
    assert resp.status == 404
    resp = await shop.client.delete(path, headers=shop.auth("alice"))
    body = await resp.json()
    assert resp.status == 200 and body["success"] is True and body["quantity"] == 1
    product = shop.cluster.ledger.product("p1")
    assert product is not None and product.available == 5


async def test_checkout_refuses_card_numbers_and_never_logs_them(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    shop.create("p1", 5)
    _, held, _ = await shop.reserve("alice", "p1")
    before = shop.cluster.commands_submitted
    caplog.set_level(logging.DEBUG)
    for change in (
        {"payment_method": "4111111111111111"},
        {"shipping_address": {"address_line1": "4111 1111 1111 1111", "city": "x",
                              "postal_code": "1", "country": "US"}},
    ):
        status, body, _ = await shop.checkout("alice", held["cart_id"], **change)
        assert _is_problem(status, body, 422, "card-number-refused")
        assert "4111" not in str(body)
    assert shop.cluster.commands_submitted == before
    assert "4111" not in caplog.text


async def test_checkout_needs_a_provider_token(shop: Shop) -> None:
    status, body, _ = await shop.checkout("alice", "c1", payment_method="visa")
    assert _is_problem(status, body, 422, "invalid-input")
    assert body["field"] == "payment_method"


async def test_checkout_of_an_empty_cart_reports_inventory_failed(shop: Shop) -> None:
    shop.create("p1", 5)
    _, held, _ = await shop.reserve("alice", "p1")
    await shop.client.delete(
        f"/cart/{held['cart_id']}/items/{held['hold_id']}", headers=shop.auth("alice")
    )
    status, body, _ = await shop.checkout("alice", held["cart_id"])
    assert _is_problem(status, body, 409, "empty-cart")
    assert body["inventory_status"] == "failed"


# -- cluster trouble ------------------------------------------------------------------


async def test_no_leader_is_503_with_retry_after(shop: Shop) -> None:
    shop.create("p1", 5)
    shop.cluster.fail_next = [NoLeader("electing")]
    status, body, headers = await shop.reserve("alice", "p1", key="k1")
    assert _is_problem(status, body, 503, "no-leader")
    assert headers["Retry-After"] and headers["Idempotency-Key"] == "k1"
    assert (await shop.reserve("alice", "p1", key="k1"))[0] == 200


async def test_an_unknown_outcome_is_resolved_by_retrying_with_the_same_key(shop: Shop) -> None:
    shop.create("p1", 5)
    shop.cluster.apply_then_fail = [CommitUnknown("answer lost")]
    status, body, headers = await shop.reserve("alice", "p1", key="k1")
    assert _is_problem(status, body, 503, "commit-unknown")
    assert headers["Retry-After"]
    status, again, _ = await shop.reserve("alice", "p1", key="k1")
    assert status == 200
    holds = shop.cluster.ledger.holds_of_cart(again["cart_id"])
    assert [h.hold_id for h in holds] == [again["hold_id"]]  # applied exactly once


async def test_concurrent_writes_are_batched(tmp_path: Path) -> None:
    async for shop in _shop(tmp_path, batch_window_ms=5):
        shop.create("p1", 1000)
        shop.cluster.submit_delay_s = 0.02  # while one batch is in flight, others queue
        outcomes = await asyncio.gather(
            *(shop.reserve(f"user{i}", "p1") for i in range(60))
        )
        assert all(status == 200 for status, _, _ in outcomes)
        assert len({body["hold_id"] for _, body, _ in outcomes}) == 60
        assert len(shop.cluster.batches) < 60
        assert max(len(b) for b in shop.cluster.batches) > 1


async def test_a_full_write_queue_sheds_load(tmp_path: Path) -> None:
    async for shop in _shop(tmp_path, queue_limit=1, max_batch=1, batch_window_ms=0):
        shop.create("p1", 1000)
        shop.cluster.submit_delay_s = 0.2
        outcomes = await asyncio.gather(*(shop.reserve(f"u{i}", "p1") for i in range(10)))
        statuses = [s for s, _, _ in outcomes]
        assert 200 in statuses and 503 in statuses
        shed = [b for s, b, h in outcomes if s == 503]
        assert all(b["type"] == PROBLEM_BASE + "overloaded" for b in shed)


# -- reads -----------------------------------------------------------------------------


async def test_inventory_and_products_come_from_the_cache(shop: Shop) -> None:
    shop.create("p1", 7, per_user_limit=2)
    await shop.reserve("alice", "p1", 2)
    await shop.synced()
    resp = await shop.client.get("/inventory/p1")
    body = await resp.json()
    assert resp.status == 200
    assert body == {**body, "product_id": "p1", "available_quantity": 5}
    assert int(resp.headers["X-Ledger-Index"]) == shop.state.cache.index
    assert resp.headers["X-Cache"] == "hit"

    resp = await shop.client.get("/products/p1")
    product = await resp.json()
    assert product["price"] == "19.99" and product["per_user_limit"] == 2
    assert product["available_quantity"] == 5

    resp = await shop.client.get("/products")
    listed = await resp.json()
    assert [p["product_id"] for p in listed["products"]] == ["p1"]

    resp = await shop.client.get("/inventory/none")
    assert _is_problem(resp.status, await resp.json(content_type=None), 404, "unknown-product")


async def test_health_readiness_metrics_and_openapi(shop: Shop) -> None:
    resp = await shop.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["ok"] is True
    await shop.synced()
    resp = await shop.client.get("/readyz")
    assert resp.status == 200, await resp.text()
    shop.cluster.leader_node = None
    resp = await shop.client.get("/readyz")
    assert resp.status == 503 and resp.headers["Retry-After"]

    resp = await shop.client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200
    assert 'flashsale_gateway_requests_total{method="GET",route="/readyz",status="503"}' in text
    assert "flashsale_gateway_cache_ledger_index" in text

    resp = await shop.client.get("/openapi.json")
    doc = await resp.json()
    assert doc == openapi_document()


def test_openapi_describes_every_route_and_payment(tmp_path: Path) -> None:
    app = create_app(_config(tmp_path), "g1", cluster=InProcessCluster(_config(tmp_path)))
    served = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        # "*": the front door's catch-all, which only answers 404 and 405
        if r.resource is not None and r.method not in ("HEAD", "*")
    }
    paths = openapi_document()["paths"]
    documented = {(p, m) for p, ops in paths.items() for m in ops}
    assert served <= documented
    assert ("/payment", "post") in documented
    schemas = openapi_document()["components"]["schemas"]
    assert set(schemas["PaymentRequest"]["required"]) == {"order_id", "payment_method", "amount"}


async def test_ids_cannot_steer_requests_to_other_internal_paths(shop: Shop) -> None:
    resp = await shop.client.get("/cart/x%2F..%2F..%2Fstatus", headers=shop.auth("alice"))
    assert resp.status == 404
    assert shop.cluster.paths[-1] == "/v1/carts/x%2F..%2F..%2Fstatus"
    # Sent as typed: clients otherwise resolve "/orders/.." to "/" (the shop page).
    raw = URL(str(shop.client.make_url("/")).rstrip("/") + "/orders/..", encoded=True)
    resp = await shop.client.session.get(raw, headers=shop.auth("alice"))
    assert resp.status in (404, 422)
    assert all(p.startswith(("/v1/carts/", "/v1/feed")) for p in shop.cluster.paths)


async def test_a_compressed_body_is_read_whole_and_may_not_inflate_past_the_cap(
    shop: Shop,
) -> None:
    # A small body is taken straight from the buffer; a compressed one still goes through
    # aiohttp's read, which is what stops it inflating past MAX_BODY_BYTES.
    shop.create("p1", 5)
    headers = {**shop.auth("alice"), "Content-Encoding": "gzip"}
    body = json.dumps({"user_id": "alice", "product_id": "p1", "quantity": 1}).encode()
    resp = await shop.client.post("/add-to-cart", data=gzip.compress(body), headers=headers)
    assert resp.status == 200, await resp.text()
    bomb = gzip.compress(b'{"pad": "' + b"x" * 200_000 + b'"}')
    assert len(bomb) < 2_000
    resp = await shop.client.post("/add-to-cart", data=bomb, headers=headers)
    assert _is_problem(resp.status, await resp.json(content_type=None), 413, "body-too-large")
    product = shop.cluster.ledger.product("p1")
    assert product is not None and product.available == 4


async def test_unknown_paths_and_big_bodies_are_problems(shop: Shop) -> None:
    resp = await shop.client.get("/nowhere")
    assert _is_problem(resp.status, await resp.json(content_type=None), 404, "not-found")
    resp = await shop.client.post(
        "/add-to-cart", data=b"{" + b" " * 20_000 + b"}", headers=shop.auth("alice")
    )
    assert _is_problem(resp.status, await resp.json(content_type=None), 413, "body-too-large")
    resp = await shop.client.post("/add-to-cart", data=b"{oops", headers=shop.auth("alice"))
    assert _is_problem(resp.status, await resp.json(content_type=None), 400, "malformed-json")
