"""POST /payment and the payment webhooks through the real gateway application, against
the payments sandbox over real HTTP.

The gateway is ``gateway.server.create_app`` with its cluster replaced by an in-process
ledger (tests.test_gateway_api.InProcessCluster); the providers are the real Stripe and
PayPal clients talking to ``payments.sandbox`` on a free loopback port. The sandbox's
charge counter is the witness for "charged exactly once".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import pii.gateway
from cluster.config import build_config
from gateway.identity import issue_token
from gateway.payment import PAYMENTS, RECONCILER
from gateway.problems import PROBLEM_BASE
from gateway.server import create_app
from payments.attempts import AttemptState
from payments.sandbox import SANDBOX, Sandbox, SandboxSettings
from payments.sandbox import create_app as create_sandbox
from payments.service import PaymentService
from payments.webhooks import webhook_secret
from tests.test_gateway_api import InProcessCluster

SECRET = "payments-test-secret"
DEADLINE_S = 10.0


class PayShop:
    """A gateway and a sandbox, and what the tests need to reach behind them."""

    def __init__(
        self, client: TestClient[Any, Any], cluster: InProcessCluster, sandbox_url: str,
        sandbox: Sandbox,
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.sandbox_url = sandbox_url
        self.sandbox = sandbox
        self.service: PaymentService = client.server.app[PAYMENTS]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(SECRET, user, 600)}"}

    def create(self, pid: str, stock: int, price_minor: int = 1999) -> None:
        result = self.cluster.apply([{
            "type": "create_product", "key": f"create-{pid}", "product_id": pid,
            "name": f"Product {pid}", "price_minor": price_minor, "total_stock": stock,
        }])
        assert result.results[0]["ok"], result.results[0]

    async def order(self, user: str, pid: str, quantity: int = 1) -> dict[str, Any]:
        """Add to cart and check out over HTTP; the placed order."""
        resp = await self.client.post(
            "/add-to-cart", json={"user_id": user, "product_id": pid, "quantity": quantity},
            headers=self.auth(user),
        )
        held = await resp.json()
        assert resp.status == 200, held
        body = {"user_id": user, "cart_id": held["cart_id"], "payment_method": "pm_card_visa",
                "shipping_address": {"address_line1": "1 Main St", "city": "Springfield",
                                     "postal_code": "12345", "country": "US"}}
        resp = await self.client.post("/checkout", json=body, headers=self.auth(user))
        order = await resp.json()
        assert resp.status == 200, order
        return dict(order)

    async def pay(
        self, user: str, order_id: str, amount: object, method: str = "pm_card_visa"
    ) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post(
            "/payment", json={"order_id": order_id, "payment_method": method, "amount": amount},
            headers=self.auth(user),
        )
        return resp.status, dict(await resp.json(content_type=None))

    async def switch(self, **settings: Any) -> None:
        """Flip sandbox switches over its admin API."""
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.sandbox_url}/_sandbox/config", json=settings
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(
            f"{self.sandbox_url}/_sandbox/stats"
        ) as resp:
            return dict(await resp.json())

    def ledger_order(self, order_id: str) -> Any:
        found = self.cluster.ledger.order(order_id)
        assert found is not None
        return found

    async def until(self, what: str, check: Callable[[], Awaitable[bool] | bool]) -> None:
        """Poll ``check`` until true (DEADLINE_S)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while True:
            outcome = check()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
            if loop.time() > deadline:
                raise AssertionError(f"not within {DEADLINE_S}s: {what}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def pay_shop(
    tmp_path: Path, *, providers: tuple[str, ...] = ("stripe", "paypal"), webhooks: bool = False,
    **payments: Any,
) -> AsyncIterator[PayShop]:
    sandbox_app = create_sandbox(SandboxSettings())
    sandbox_server = TestServer(sandbox_app)
    await sandbox_server.start_server()
    sandbox_url = str(sandbox_server.make_url("")).rstrip("/")
    settings = {
        "providers": list(providers),
        "stripe_api_base": sandbox_url,
        "paypal_api_base": sandbox_url,
        "charge_timeout_ms": 5000,
        "reconcile_period_ms": 60_000,
        **payments,
    }
    config = build_config(
        {
            "cluster": {"secret": SECRET, "data_dir": str(tmp_path / "var")},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [{"id": "g1", "listen": "127.0.0.1:3"}],
            "gateway": {"feed_wait_ms": 100},
            "payments": settings,
            "bots": {"enabled": False},  # a trusted test client
        },
        tmp_path,
    )
    sandbox = sandbox_app[SANDBOX]
    sandbox.settings.stripe_webhook_secret = webhook_secret(config.payments, SECRET, "stripe")
    sandbox.settings.paypal_webhook_secret = webhook_secret(config.payments, SECRET, "paypal")
    pii.gateway.install_sealer(config)
    cluster = InProcessCluster(config)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, "g1", cluster=cluster)))
    await client.start_server()
    if webhooks:
        sandbox.settings.webhook_url = str(client.make_url("/webhooks"))
    try:
        yield PayShop(client, cluster, sandbox_url, sandbox)
    finally:
        await client.close()
        await sandbox_server.close()
        pii.gateway.uninstall_sealer()


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[PayShop]:
    async with pay_shop(tmp_path) as s:
        yield s


def _problem(status: int, body: dict[str, Any], expected: int, slug: str) -> bool:
    return status == expected and body.get("type") == PROBLEM_BASE + slug


# -- the happy path and its repeats -----------------------------------------------------


async def test_a_payment_completes_the_order_and_sells_its_units(shop: PayShop) -> None:
    shop.create("p1", 5)
    order = await shop.order("alice", "p1", 2)
    status, body = await shop.pay("alice", order["order_id"], "39.98")
    assert status == 200, body
    assert body["success"] is True
    assert body["payment_status"] == "completed" and body["order_status"] == "completed"
    assert body["provider"] == "stripe" and body["transaction_id"].startswith("pi_")
    assert body["card_last4"] == "4242"
    stored = shop.ledger_order(order["order_id"])
    assert stored.status == "completed" and stored.transaction_id == body["transaction_id"]
    product = shop.cluster.ledger.product("p1")
    assert product is not None and product.sold == 2 and product.reserved == 0
    assert (await shop.stats())["charges_by_order"] == {order["order_id"]: 1}


async def test_a_repeated_payment_answers_the_same_and_charges_once(shop: PayShop) -> None:
    shop.create("p1", 5)
    order = await shop.order("alice", "p1")
    first = await shop.pay("alice", order["order_id"], 19.99)  # a JSON number works too
    again = await shop.pay("alice", order["order_id"], "19.99")
    assert first[0] == again[0] == 200
    assert first[1]["transaction_id"] == again[1]["transaction_id"]
    # A double click: concurrent requests for one order.
    order2 = await shop.order("bob", "p1")
    answers = await asyncio.gather(*(shop.pay("bob", order2["order_id"], "19.99")
                                     for _ in range(5)))
    assert {a[0] for a in answers} == {200}
    assert len({a[1]["transaction_id"] for a in answers}) == 1
    stats = await shop.stats()
    assert stats["charges"] == 2
    assert stats["charges_by_order"] == {order["order_id"]: 1, order2["order_id"]: 1}


async def test_the_amount_must_equal_the_orders_amount_exactly(shop: PayShop) -> None:
    shop.create("p1", 5)
    order = await shop.order("alice", "p1")
    for wrong in ("19.98", "19.991", "20", -19.99, "nineteen"):
        status, body = await shop.pay("alice", order["order_id"], wrong)
        assert status == 422, (wrong, body)
        assert body["type"] in (PROBLEM_BASE + "amount-mismatch", PROBLEM_BASE + "invalid-input")
        assert body["field"] == "amount"
    status, body = await shop.pay("alice", order["order_id"], "19.990")
    assert status == 200, body
    assert (await shop.stats())["charges"] == 1


async def test_only_the_orders_shopper_can_pay_it(shop: PayShop) -> None:
    shop.create("p1", 5)
    order = await shop.order("alice", "p1")
    status, body = await shop.pay("mallory", order["order_id"], "19.99")
    assert _problem(status, body, 404, "unknown-order")
    status, body = await shop.pay("mallory", "o-none", "19.99")
    assert _problem(status, body, 404, "unknown-order")
    resp = await shop.client.post(
        "/payment", json={"order_id": order["order_id"], "payment_method": "pm_card_visa",
                          "amount": "19.99"},
    )
    assert resp.status == 401
    assert (await shop.stats())["requests"] == 0


async def test_a_card_number_is_refused_and_never_sent_anywhere(shop: PayShop) -> None:
    shop.create("p1", 5)
    order = await shop.order("alice", "p1")
    status, body = await shop.pay("alice", order["order_id"], "19.99", "4242 4242 4242 4242")
    assert _problem(status, body, 422, "card-number-refused")
    assert "4242" not in str(body)
    status, body = await shop.pay("alice", order["order_id"], "19.99", "visa")
    assert _problem(status, body, 422, "invalid-input") and body["field"] == "payment_method"
    assert (await shop.stats())["requests"] == 0


# -- declines --------------------------------------------------------------------------


async def test_a_decline_is_402_and_the_shopper_may_retry(shop: PayShop) -> None:
    shop.create("p1", 5)
    order = await shop.order("alice", "p1")
    status, body = await shop.pay("alice", order["order_id"], "19.99", "pm_card_declined")
    assert _problem(status, body, 402, "payment-declined"), body
    assert body["decline_code"] == "generic_decline"
    assert body["order_status"] == "pending" and body["payment_attempts"] == 1
    assert body["provider"] == "stripe", "a decline does not fail over"
    stored = shop.ledger_order(order["order_id"])
    assert stored.status == "pending" and stored.payment_attempts == 1

    status, body = await shop.pay("alice", order["order_id"], "19.99", "pm_card_visa")
    assert status == 200, body
    assert body["payment_attempts"] == 2
    stats = await shop.stats()
    assert stats["declines"] == 1 and stats["charges"] == 1
    assert stats["by_api"]["paypal"].get("requests", 0) == 0


# -- failover and the breaker ----------------------------------------------------------


async def test_a_provider_outage_fails_over_to_the_next_provider(shop: PayShop) -> None:
    shop.create("p1", 5)
    await shop.switch(outage=["stripe"])
    order = await shop.order("alice", "p1")
    status, body = await shop.pay("alice", order["order_id"], "19.99")
    assert status == 200, body
    assert body["provider"] == "paypal"
    stored = shop.ledger_order(order["order_id"])
    assert stored.status == "completed" and stored.provider == "paypal"
    stats = await shop.stats()
    assert stats["outage_answers"] >= 1
    assert stats["charges"] == 1 and stats["by_api"]["paypal"]["charges"] == 1
    attempts = await shop.service.store.of_order(order["order_id"])
    assert {a.provider: a.state for a in attempts} == {
        "stripe": AttemptState.NOT_CHARGED, "paypal": AttemptState.RECORDED,
    }


async def test_an_open_breaker_skips_the_provider_until_its_cool_down(tmp_path: Path) -> None:
    async with pay_shop(
        tmp_path, breaker_failure_threshold=2, breaker_cooldown_ms=60_000
    ) as shop:
        shop.create("p1", 10)
        await shop.switch(outage=["stripe"])
        for user in ("u1", "u2"):
            order = await shop.order(user, "p1")
            assert (await shop.pay(user, order["order_id"], "19.99"))[0] == 200
        before = (await shop.stats())["by_api"]["stripe"]["requests"]
        order = await shop.order("u3", "p1")
        status, body = await shop.pay("u3", order["order_id"], "19.99")
        assert status == 200 and body["provider"] == "paypal"
        assert (await shop.stats())["by_api"]["stripe"]["requests"] == before, "breaker open"
        assert str(shop.service.router.modes()["stripe"]) == "open"


async def test_every_provider_down_is_503_and_nothing_is_charged(shop: PayShop) -> None:
    shop.create("p1", 5)
    await shop.switch(outage=True)
    order = await shop.order("alice", "p1")
    status, body = await shop.pay("alice", order["order_id"], "19.99")
    assert _problem(status, body, 503, "payments-unavailable")
    await shop.switch(outage=False)
    status, body = await shop.pay("alice", order["order_id"], "19.99")
    assert status == 200, body
    assert (await shop.stats())["charges"] == 1


# -- unknown outcomes, the reconciler, late successes ---------------------------------


async def test_a_timeout_leaves_the_order_pending_until_the_reconciler_settles_it(
    tmp_path: Path,
) -> None:
    async with pay_shop(tmp_path, charge_timeout_ms=300, reconcile_period_ms=50) as shop:
        shop.create("p1", 5)
        await shop.switch(hang_after_charge=["stripe"])
        order = await shop.order("alice", "p1")
        status, body = await shop.pay("alice", order["order_id"], "19.99")
        assert status == 202, body
        assert body["payment_status"] == "pending" and body["success"] is False
        assert body["provider"] == "stripe"
        # No failover after a timeout: it could have charged (it did).
        assert (await shop.stats())["by_api"]["paypal"].get("requests", 0) == 0
        await shop.until("reconciled", lambda: shop.ledger_order(
            order["order_id"]).status == "completed")
        await shop.switch(hang_after_charge=[])
        status, body = await shop.pay("alice", order["order_id"], "19.99")
        assert status == 200 and body["payment_status"] == "completed"
        assert body["transaction_id"] == shop.ledger_order(order["order_id"]).transaction_id
        assert (await shop.stats())["charges_by_order"] == {order["order_id"]: 1}


async def test_a_retry_of_an_unknown_payment_asks_the_provider_instead_of_charging(
    tmp_path: Path,
) -> None:
    async with pay_shop(tmp_path, charge_timeout_ms=300) as shop:
        shop.create("p1", 5)
        await shop.switch(hang_after_charge=["stripe"])
        order = await shop.order("alice", "p1")
        assert (await shop.pay("alice", order["order_id"], "19.99"))[0] == 202
        status, body = await shop.pay("alice", order["order_id"], "19.99")
        assert status == 200, body
        assert (await shop.stats())["charges_by_order"] == {order["order_id"]: 1}
        await shop.switch(hang_after_charge=[])


async def test_a_held_charge_stays_pending_and_is_charged_once_in_the_end(
    tmp_path: Path,
) -> None:
    async with pay_shop(tmp_path, charge_timeout_ms=300) as shop:
        shop.create("p1", 5)
        await shop.switch(hang=["stripe"], hang_max_ms=30_000)
        order = await shop.order("alice", "p1")
        assert (await shop.pay("alice", order["order_id"], "19.99"))[0] == 202
        # The provider cannot say either (its lookups hang too): still pending, no charge.
        status, body = await shop.pay("alice", order["order_id"], "19.99")
        assert status == 202, body
        assert (await shop.stats())["charges"] == 0
        await shop.switch(hang=[])
        # The held charge goes on at the provider; the reconciler then records it.
        await shop.until("charged", lambda: shop.sandbox.stats.charges == 1)
        await shop.client.server.app[RECONCILER].run_once()
        assert shop.ledger_order(order["order_id"]).status == "completed"
        assert (await shop.stats())["charges_by_order"] == {order["order_id"]: 1}


async def _expire(shop: PayShop, order_id: str) -> None:
    pay_by = shop.ledger_order(order_id).pay_by_ms
    await shop.until("deadline passed", lambda: time.time() * 1000 > pay_by)
    shop.cluster.apply([{"type": "expire", "key": f"expire-{order_id}"}])
    assert shop.ledger_order(order_id).status == "failed"


async def test_a_success_after_the_deadline_is_refunded_and_the_order_stays_failed(
    tmp_path: Path,
) -> None:
    async with pay_shop(tmp_path, charge_timeout_ms=300) as shop:
        shop.cluster.apply([{"type": "configure", "key": "ttl", "payment_ttl_ms": 1000}])
        shop.create("p1", 5)
        await shop.switch(hang_after_charge=["stripe"])
        order = await shop.order("alice", "p1")
        status, _ = await shop.pay("alice", order["order_id"], "19.99")
        assert status == 202
        await _expire(shop, order["order_id"])
        await shop.switch(hang_after_charge=[])
        await shop.client.server.app[RECONCILER].run_once()
        stored = shop.ledger_order(order["order_id"])
        assert stored.status == "failed" and stored.failure == "expired"
        stats = await shop.stats()
        assert stats["charges"] == 1 and stats["refunds"] == 1
        product = shop.cluster.ledger.product("p1")
        assert product is not None and product.available == 5 and product.sold == 0
        attempts = await shop.service.store.of_order(order["order_id"])
        assert [a.state for a in attempts] == [AttemptState.REFUNDED]
        # Paying again is refused: the units went back on sale.
        status, body = await shop.pay("alice", order["order_id"], "19.99")
        assert _problem(status, body, 410, "hold-expired")
        assert (await shop.stats())["charges"] == 1


# -- webhooks --------------------------------------------------------------------------


async def test_a_signed_webhook_settles_a_pending_payment(tmp_path: Path) -> None:
    async with pay_shop(tmp_path, charge_timeout_ms=300, webhooks=True) as shop:
        shop.create("p1", 5)
        await shop.switch(hang_after_charge=["stripe"])
        order = await shop.order("alice", "p1")
        status, _ = await shop.pay("alice", order["order_id"], "19.99")
        assert status == 202
        # The reconciler never ran (60 s period after its first pass): the webhook did it.
        await shop.until("webhook settled", lambda: shop.ledger_order(
            order["order_id"]).status == "completed")
        assert (await shop.stats())["webhooks_sent"] >= 1
        await shop.switch(hang_after_charge=[])


async def test_a_late_paypal_capture_after_expiry_is_refunded(tmp_path: Path) -> None:
    async with pay_shop(tmp_path, providers=("paypal",), charge_timeout_ms=300) as shop:
        shop.cluster.apply([{"type": "configure", "key": "ttl", "payment_ttl_ms": 1000}])
        shop.create("p1", 5)
        await shop.switch(hang_after_charge=["paypal"])
        order = await shop.order("alice", "p1")
        assert (await shop.pay("alice", order["order_id"], "19.99"))[0] == 202
        await _expire(shop, order["order_id"])
        await shop.switch(hang_after_charge=[])
        # No webhook reached the gateway (none was configured): a reconciler pass settles it.
        await shop.client.server.app[RECONCILER].run_once()
        stats = await shop.stats()
        assert stats["charges"] == 1 and stats["refunds"] == 1
        assert shop.ledger_order(order["order_id"]).status == "failed"


async def test_forged_or_unsigned_webhooks_are_refused(shop: PayShop) -> None:
    shop.create("p1", 5)
    order = await shop.order("alice", "p1")
    event = {"type": "payment_intent.succeeded", "data": {"object": {
        "id": "pi_forged", "amount": 1999, "currency": "usd",
        "metadata": {"attempt_key": f"order:{order['order_id']}:attempt:1"}}}}
    for headers in ({}, {"Stripe-Signature": "t=1,v1=00"}):
        resp = await shop.client.post("/webhooks/stripe", json=event, headers=headers)
        body = await resp.json(content_type=None)
        assert _problem(resp.status, body, 400, "invalid-webhook")
    resp = await shop.client.post("/webhooks/paypal", json={}, headers={})
    assert resp.status == 400
    resp = await shop.client.post("/webhooks/acme", data=b"{}")
    assert resp.status == 400
    assert shop.ledger_order(order["order_id"]).status == "pending"


async def test_payments_without_providers_answer_503(tmp_path: Path) -> None:
    async with pay_shop(tmp_path, providers=()) as shop:
        shop.create("p1", 5)
        order = await shop.order("alice", "p1")
        status, body = await shop.pay("alice", order["order_id"], "19.99")
        assert _problem(status, body, 503, "payments-unavailable")
        assert not (tmp_path / "var" / "gateways" / "g1" / "payments.db").exists()
