"""The gateway's side of notifications, through real HTTP in this process: a checkout with
an email and a phone reaches the shopper by both; ``POST /products/{id}/subscribe``
seals the contact details and stores them in the notifier, whose sold-out notice then
arrives; the gateway's answers when the notifier is absent or refuses.

The gateway is the real application over an in-process ledger (``InProcessCluster`` of
test_gateway_api); the notifier is the real one, following that ledger's feed, with its
internal API on the configured listen address; SMTP and SMS servers are real too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cluster.config import ClusterConfig, build_config
from gateway.cards import luhn_valid
from gateway.identity import issue_token
from gateway.server import create_app as create_gateway
from notifier.api import create_app as create_notifier_api
from notifier.service import Notifier
from snapshots.feed import page_of
from snapshots.store import FeedPage
from tests.support.cluster import free_ports
from tests.support.notifier_rig import (
    MAIL_FROM,
    SMS_ACCOUNT,
    SMS_FROM,
    SMS_TOKEN,
    SmsSink,
    SmtpSink,
    eventually,
)
from tests.test_gateway_api import InProcessCluster

SECRET = "gateway-notifier-test-secret-0123456789"
ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "US", "name": "Grace Hopper"}


def luhn_phone() -> str:
    """An E.164 number whose 14 digits pass the Luhn check, as a card number's would."""
    for n in range(10):
        number = f"+4915123456{n}78"
        if luhn_valid(number[1:]):
            return number
    raise AssertionError("no Luhn-valid number in the range")


class ClusterFeed:
    """The notifier's feed, read from the in-process cluster like from a node."""

    def __init__(self, cluster: InProcessCluster) -> None:
        self.cluster = cluster

    async def fetch(self, from_index: int, limit: int, wait_ms: int) -> FeedPage:
        body = await self.cluster.get(
            "/v1/feed", params={"from": from_index, "limit": limit, "wait_ms": wait_ms}
        )
        return page_of(body)

    async def close(self) -> None:
        return None


def _config(tmp_path: Path, smtp: SmtpSink, sms: SmsSink, *, listen: bool = True) -> ClusterConfig:
    ports = free_ports(4)
    notifier: dict[str, Any] = {
        "outbox": str(tmp_path / "outbox.db"),
        "feed_wait_ms": 100,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_starttls": False,
        "mail_from": MAIL_FROM,
        "sms_url": sms.url,
        "sms_account": SMS_ACCOUNT,
        "sms_from": SMS_FROM,
        "retry_first_ms": 50,
        "retry_max_ms": 200,
    }
    if listen:
        notifier["listen"] = f"127.0.0.1:{ports[3]}"
    return build_config(
        {
            "cluster": {"secret": SECRET},
            "nodes": [{"id": "n1", "raft": f"127.0.0.1:{ports[0]}",
                       "api": f"127.0.0.1:{ports[1]}"}],
            "gateways": [{"id": "g1", "listen": f"127.0.0.1:{ports[2]}"}],
            "bots": {"enabled": False},
            "gateway": {"feed_wait_ms": 100},
            "storage": {"url": "sqlite:///" + str(tmp_path / "orders.db")},
            "notifier": notifier,
        },
        tmp_path,
    )


@dataclass
class Stack:
    client: TestClient[Any, Any]
    cluster: InProcessCluster
    smtp: SmtpSink
    sms: SmsSink
    notifier: Notifier | None

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(SECRET, user, 600)}"}

    def create(self, pid: str, stock: int) -> None:
        result = self.cluster.apply(
            [{"type": "create_product", "key": f"create-{pid}", "product_id": pid,
              "name": f"Product {pid}", "price_minor": 1999, "total_stock": stock}]
        )
        assert result.results[0]["ok"], result.results[0]

    async def post(
        self, path: str, user: str | None, body: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        headers = self.auth(user) if user else {}
        resp = await self.client.post(path, json=body, headers=headers)
        return resp.status, await resp.json(content_type=None)

    async def reserve(self, user: str, pid: str) -> dict[str, Any]:
        status, body = await self.post(
            "/add-to-cart", user, {"user_id": user, "product_id": pid, "quantity": 1}
        )
        assert status == 200, body
        return body


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, *, notifier_up: bool = True, listen: bool = True
                ) -> AsyncIterator[Stack]:
    smtp, sms = SmtpSink(), SmsSink()
    async with contextlib.AsyncExitStack() as exits:
        smtp.start()
        exits.callback(smtp.stop)
        await sms.start()
        exits.push_async_callback(sms.stop)
        config = _config(tmp_path, smtp, sms, listen=listen)
        cluster = InProcessCluster(config)
        notifier: Notifier | None = None
        if notifier_up:
            notifier = Notifier(config, feed=ClusterFeed(cluster), env={
                "FLASHSALE_SMS_TOKEN": SMS_TOKEN})
            exits.push_async_callback(notifier.close)
            await notifier.start()
            stop = asyncio.Event()
            task = asyncio.ensure_future(notifier.run(stop))

            async def halt() -> None:
                stop.set()
                await asyncio.wait_for(task, 30)

            exits.push_async_callback(halt)
            listen_at = config.notifier.listen
            assert listen_at is not None
            runner = web.AppRunner(create_notifier_api(notifier))
            await runner.setup()
            exits.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, listen_at.host, listen_at.port).start()
        client: TestClient[Any, Any] = TestClient(
            TestServer(create_gateway(config, "g1", cluster=cluster))
        )
        await client.start_server()
        exits.push_async_callback(client.close)
        yield Stack(client, cluster, smtp, sms, notifier)


async def test_checkout_with_email_and_phone_reaches_the_shopper_by_both(tmp_path: Path) -> None:
    phone = luhn_phone()
    async with stack(tmp_path) as s:
        s.create("p1", 5)
        held = await s.reserve("grace", "p1")
        status, order = await s.post(
            "/checkout",
            "grace",
            {"user_id": "grace", "cart_id": held["cart_id"], "payment_method": "pm_card_visa",
             "shipping_address": ADDRESS, "email": "grace@example.com", "phone": phone},
        )
        assert status == 200, order
        # Personal data went into the ledger sealed.
        sealed = s.cluster.ledger.order(order["order_id"]).sealed_details  # type: ignore[union-attr]
        assert sealed.startswith("v1.") and "grace@example.com" not in sealed
        assert phone[1:] not in sealed
        await eventually(lambda: s.smtp.count() == 1 and len(s.sms.messages) == 1)
        [mail] = s.smtp.received()
        assert mail.recipients == ["grace@example.com"]
        assert order["order_id"] in mail.message["Subject"]
        assert "Hello Grace Hopper," in mail.body("plain")
        assert s.sms.messages[0].to == phone and order["order_id"] in s.sms.messages[0].body


async def test_a_phone_that_is_no_e164_number_is_refused(tmp_path: Path) -> None:
    async with stack(tmp_path, notifier_up=False) as s:
        s.create("p1", 5)
        held = await s.reserve("grace", "p1")
        body = {"user_id": "grace", "cart_id": held["cart_id"], "payment_method": "pm_card_visa",
                "shipping_address": ADDRESS}
        for phone in ("0612345678", "+33 6 12 34 56 78", "+1234567890123456"):
            status, problem = await s.post("/checkout", "grace", {**body, "phone": phone})
            assert status == 422 and problem["field"] == "phone", (phone, problem)
        # A card number stays refused everywhere else, and in the phone field unless it
        # is written as an E.164 number.
        status, problem = await s.post(
            "/checkout", "grace", {**body, "phone": "4242 4242 4242 4242"}
        )
        assert status == 422 and problem["type"].endswith("/card-number-refused")


async def test_subscribe_through_the_gateway_then_sold_out_is_notified(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.create("drop", 1)
        path = "/products/drop/subscribe"
        status, body = await s.post(path, "fan", {"email": "fan@example.com",
                                                  "phone": luhn_phone()})
        assert status == 200, body
        assert body == {"product_id": "drop", "subscribed": True, "channels": ["email", "sms"]}
        assert s.notifier is not None
        summary = await s.notifier.refresh_gauges()
        assert summary["subscriptions"] == 1

        status, body = await s.post(path, None, {"email": "x@example.com"})
        assert status == 401
        status, body = await s.post("/products/nothing/subscribe", "fan", {"email": "f@x.io"})
        assert status == 404 and body["type"].endswith("/unknown-product")
        for bad in ({}, {"email": "not-an-address"}, {"phone": "12"}, {"fax": "1"}):
            status, body = await s.post(path, "fan", bad)
            assert status == 422, (bad, body)

        await s.reserve("buyer", "drop")  # sells out
        await eventually(lambda: s.smtp.count() == 1 and len(s.sms.messages) == 1)
        assert s.smtp.received()[0].message["Subject"] == "Product drop is sold out"

        resp = await s.client.delete(path, headers=s.auth("fan"))
        assert resp.status == 200
        assert await resp.json() == {"product_id": "drop", "subscribed": False}
        assert (await s.notifier.refresh_gauges())["subscriptions"] == 0


@pytest.mark.parametrize("listen", [True, False])
async def test_subscribe_without_a_notifier_is_503(tmp_path: Path, listen: bool) -> None:
    async with stack(tmp_path, notifier_up=False, listen=listen) as s:
        s.create("drop", 1)
        status, body = await s.post("/products/drop/subscribe", "fan", {"email": "f@x.io"})
        assert status == 503, body
        assert body["type"].endswith("/notifications-unavailable")
