"""The notifier end to end in this process: a real ledger's feed served over HTTP, a real
SMTP server (aiosmtpd) and a Twilio-style SMS endpoint on loopback.

Order placed -> exactly one email and one SMS with the right content; paid -> one more
of each; sold out -> one notice per subscriber, trier and holder that has an address;
the SMTP server down for a while -> everything delivered once it is back; bulk notices
never hold order notices back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cluster.auth import internal_token
from cluster.config import ClusterConfig
from notifier.api import create_app
from notifier.contacts import Channel, address_hash, hash_key
from notifier.email import message_id
from notifier.service import Notifier
from pii.sealing import Sealer
from tests.support.notifier_rig import (
    MAIL_FROM,
    SECRET,
    SMS_ACCOUNT,
    SMS_FROM,
    SMS_TOKEN,
    SMTP_PASSWORD,
    SMTP_USER,
    FeedServer,
    SmsSink,
    SmtpSink,
    buy,
    by_recipient,
    create_product,
    details,
    eventually,
    notifier_config,
    paid,
    reserve,
    sealer,
    self_signed,
)

ENV = {"FLASHSALE_SMS_TOKEN": SMS_TOKEN, "FLASHSALE_SMTP_PASSWORD": SMTP_PASSWORD}


@dataclass
class Rig:
    config: ClusterConfig
    feed: FeedServer
    smtp: SmtpSink
    sms: SmsSink
    seal: Sealer
    notifier: Notifier
    api: TestClient[Any, Any]

    async def summary(self) -> dict[str, Any]:
        return await self.notifier.refresh_gauges()

    async def settled(self) -> dict[str, Any]:
        """Wait until the outbox holds the feed's last entry and nothing is left to send."""
        index = self.feed.feed.ledger.index

        async def done() -> bool:
            s = await self.summary()
            return s["feed_index"] >= index and not s["pending"]

        await eventually(done, what="the outbox to settle")
        return await self.summary()

    async def subscribe(self, user_id: str, product_id: str, **contact: str) -> dict[str, Any]:
        resp = await self.api.post(
            "/v1/subscriptions",
            json={
                "user_id": user_id,
                "product_id": product_id,
                "sealed": self.seal.seal(user_id, contact),
            },
            headers={"Authorization": f"Bearer {internal_token(SECRET)}"},
        )
        body: dict[str, Any] = await resp.json(content_type=None)
        assert resp.status == 200, body
        return body


@contextlib.asynccontextmanager
async def running(tmp_path: Path, smtp: SmtpSink, **settings: object) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        feed, sms = FeedServer(), SmsSink()
        await feed.start()
        stack.push_async_callback(feed.stop)
        await sms.start()
        stack.push_async_callback(sms.stop)
        config = notifier_config(tmp_path, feed_port=feed.port, smtp=smtp, sms=sms, **settings)
        seal = sealer(config)
        stack.callback(seal.keys.close)
        notifier = Notifier(config, env=ENV)
        stack.push_async_callback(notifier.close)
        await notifier.start()
        stop = asyncio.Event()
        task = asyncio.ensure_future(notifier.run(stop))

        async def stop_notifier() -> None:
            stop.set()
            await asyncio.wait_for(task, 30)

        stack.push_async_callback(stop_notifier)
        api: TestClient[Any, Any] = TestClient(TestServer(create_app(notifier)))
        await api.start_server()
        stack.push_async_callback(api.close)
        yield Rig(config, feed, smtp, sms, seal, notifier, api)


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
async def rig(tmp_path: Path, smtp: SmtpSink) -> AsyncIterator[Rig]:
    async with running(tmp_path, smtp) as r:
        yield r


async def test_order_placed_sends_one_email_and_one_sms_then_paid_one_more(rig: Rig) -> None:
    await rig.feed.apply(create_product(rig.feed, "sneaker", stock=10, name="Demo Sneaker"))
    info = details("ada@example.com", "+33612345678", name="Ada Lovelace")
    order_id = await buy(rig.feed, rig.seal, "ada", "sneaker", info, quantity=2)

    await eventually(lambda: rig.smtp.count() == 1 and len(rig.sms.messages) == 1)
    s = await rig.settled()
    assert s["rows"] == {"sent": 2}
    [mail] = rig.smtp.received()
    assert mail.recipients == ["ada@example.com"]
    assert mail.message["From"] == MAIL_FROM
    assert order_id in mail.message["Subject"] and "placed" in mail.message["Subject"]
    text = mail.body("plain")
    assert "Hello Ada Lovelace," in text
    assert "2 x Demo Sneaker at 19.99 USD" in text
    assert "Total: 39.98 USD" in text
    html = mail.body("html")
    assert "<li>2 x Demo Sneaker at 19.99 USD</li>" in html and order_id in html
    [sms] = rig.sms.messages
    assert sms.to == "+33612345678" and sms.sender == SMS_FROM
    assert order_id in sms.body and "39.98 USD" in sms.body
    assert sms.auth == "Basic " + base64.b64encode(f"{SMS_ACCOUNT}:{SMS_TOKEN}".encode()).decode()
    # Both notification ids come from the order_placed event and the address; the
    # provider gets them (Idempotency-Key, Message-ID) to drop a resend after a crash.
    key = hash_key(SECRET)
    index, seq, channel, addr = sms.idempotency_key.split(":")
    assert (channel, addr) == ("sms", address_hash(key, Channel.SMS, "+33612345678"))
    email_id = f"{index}:{seq}:email:{address_hash(key, Channel.EMAIL, 'ada@example.com')}"
    assert mail.message_id == message_id(email_id, MAIL_FROM)

    await rig.feed.apply(paid(rig.feed, order_id, 3998))
    await eventually(lambda: rig.smtp.count() == 2 and len(rig.sms.messages) == 2)
    s = await rig.settled()
    assert s["rows"] == {"sent": 4}
    assert "is paid" in rig.smtp.received()[1].message["Subject"]
    assert "payment received" in rig.sms.messages[1].body
    # Nothing else is on its way: every row is sent, none pending, and no more arrive.
    assert rig.smtp.count() == 2 and len(rig.sms.messages) == 2


async def test_an_order_without_contact_details_is_recorded_and_sends_nothing(rig: Rig) -> None:
    await rig.feed.apply(create_product(rig.feed, "p", stock=5))
    await buy(rig.feed, rig.seal, "quiet", "p", details())  # no email, no phone
    await buy(rig.feed, rig.seal, "mailonly", "p", details("m@example.com"))
    await eventually(lambda: rig.smtp.count() == 1)
    s = await rig.settled()
    assert s["rows"] == {"sent": 1}
    assert rig.sms.messages == []
    metrics = rig.notifier.metrics.render().decode()
    assert 'flashsale_notifier_skipped_total{reason="no_contact"} 1.0' in metrics


async def test_sold_out_notifies_each_subscriber_trier_and_holder_once(rig: Rig) -> None:
    feed = rig.feed
    await feed.apply(
        create_product(feed, "shirt", stock=50),
        {**create_product(feed, "drop", stock=2, name="Limited Drop"), "per_user_limit": 1},
    )
    # A trier with an address from an earlier order: refused (over the per-shopper limit).
    await buy(feed, rig.seal, "trier", "shirt", details("trier@example.com"))
    await feed.apply(reserve(feed, "trier", "drop", quantity=2))
    await rig.subscribe("sub-mail", "drop", email="fan@example.com")
    await rig.subscribe("sub-phone", "drop", phone="+15550002222")
    await rig.subscribe("sub-both", "drop", email="both@example.com", phone="+15550003333")
    await rig.subscribe("sub-same", "drop", email="FAN@example.com")  # the same address
    # Holders: one without any address, one who also subscribed. The second sells out.
    await feed.apply(reserve(feed, "anonymous", "drop"))
    await feed.apply(reserve(feed, "sub-both", "drop"))
    # Refused because it is sold out: that shopper was just told; no notice.
    await feed.apply(reserve(feed, "late", "drop"))

    await rig.settled()
    sold_out = [m for m in rig.smtp.received() if "sold out" in m.message["Subject"]]
    mails = by_recipient(sold_out)
    assert sorted(mails) == ["both@example.com", "fan@example.com", "trier@example.com"]
    assert all(len(v) == 1 for v in mails.values())
    assert all(m.message["Subject"] == "Limited Drop is sold out" for m in sold_out)
    texts = sorted((s.to, s.body) for s in rig.sms.messages)
    assert texts == [
        ("+15550002222", "flashsale: Limited Drop is sold out."),
        ("+15550003333", "flashsale: Limited Drop is sold out."),
    ]
    metrics = rig.notifier.metrics.render().decode()
    assert 'flashsale_notifier_enqueued_total{channel="email",queue="bulk"} 3.0' in metrics
    assert 'flashsale_notifier_skipped_total{reason="no_contact"} 1.0' in metrics


async def test_back_in_stock_goes_to_subscribers_and_flapping_is_deduplicated(rig: Rig) -> None:
    feed = rig.feed
    await feed.apply(create_product(feed, "drop", stock=1, name="Drop"))
    await rig.subscribe("s1", "drop", email="s1@example.com")
    held = await feed.apply(reserve(feed, "holder", "drop"))  # sells out
    hold_id = held.results[0].hold_id  # type: ignore[union-attr]
    await feed.apply(
        {"type": "release", "key": feed.key(), "user_id": "holder", "hold_id": hold_id}
    )  # back in stock
    await feed.apply(reserve(feed, "other", "drop"))  # sold out again at once
    s = await rig.settled()
    subjects = [m.message["Subject"] for m in rig.smtp.received()]
    assert subjects == ["Drop is sold out", "Drop is back in stock"]
    # The second sold-out notice falls in the window of the first: recorded, not sent.
    assert s["rows"] == {"sent": 2, "deduped": 1}


async def test_smtp_down_for_a_while_delivers_everything_when_it_is_back(
    rig: Rig,
) -> None:
    rig.smtp.stop()
    rig.sms.fail_next = 3
    await rig.feed.apply(create_product(rig.feed, "p", stock=10))
    orders = [
        await buy(rig.feed, rig.seal, f"u{i}", "p", details(f"u{i}@example.com", "+15550004444"))
        for i in range(3)
    ]

    async def failing() -> bool:
        m = rig.notifier.metrics.render().decode()
        return 'send_failures_total{channel="email",kind="transient"}' in m

    await eventually(failing, what="failed email attempts")
    await eventually(lambda: len(rig.sms.messages) == 3, what="SMS after 503s")
    assert rig.smtp.count() == 0
    rig.smtp.start()
    await eventually(lambda: rig.smtp.count() == 3, what="emails once SMTP is back")
    s = await rig.settled()
    assert s["rows"] == {"sent": 6}
    got = sorted(o for m in rig.smtp.received() for o in orders if o in m.message["Subject"])
    assert got == sorted(orders)
    assert rig.sms.refused == 3


async def test_bulk_notices_do_not_hold_order_notices_back(tmp_path: Path, smtp: SmtpSink) -> None:
    # 10 emails a second with a burst of 2: forty bulk notices take about four seconds.
    async with running(tmp_path, smtp, email_per_minute=600, email_burst=2) as rig:
        feed = rig.feed
        await feed.apply(create_product(feed, "drop", stock=1), create_product(feed, "p", stock=5))
        for i in range(40):
            await rig.subscribe(f"s{i}", "drop", email=f"s{i}@example.com")
        await feed.apply(reserve(feed, "holder", "drop"))  # sold out: 40 bulk notices
        await eventually(lambda: smtp.count() >= 3, what="the bulk notices to start")
        order_id = await buy(feed, rig.seal, "buyer", "p", details("buyer@example.com"))
        await eventually(lambda: "buyer@example.com" in by_recipient(smtp.received()))
        position = [m.recipients for m in smtp.received()].index(["buyer@example.com"])
        assert position < 30, f"the order notice waited behind {position} bulk notices"
        await rig.settled()
        assert smtp.count() == 41
        assert order_id in by_recipient(smtp.received())["buyer@example.com"][0].message["Subject"]


async def test_starttls_and_auth_as_configured(tmp_path: Path) -> None:
    context, ca_file = self_signed(tmp_path)
    sink = SmtpSink(tls=context, auth=(SMTP_USER, SMTP_PASSWORD))
    sink.start()
    try:
        async with running(
            tmp_path,
            sink,
            smtp_starttls=True,
            smtp_username=SMTP_USER,
            smtp_ca_file=str(ca_file),
        ) as rig:
            await rig.feed.apply(create_product(rig.feed, "p", stock=1))
            await buy(rig.feed, rig.seal, "ada", "p", details("ada@example.com"))
            await eventually(lambda: sink.count() == 1, what="the email over STARTTLS")
            assert sink.logins == [SMTP_USER]
    finally:
        sink.stop()


async def test_message_id_is_stable_per_notification() -> None:
    a = message_id("12:3:email:abc", MAIL_FROM)
    assert a == message_id("12:3:email:abc", MAIL_FROM)
    assert a != message_id("12:4:email:abc", MAIL_FROM)
    assert a.endswith("@flashsale.test>")


async def test_the_subscription_api_checks_token_and_details(rig: Rig) -> None:
    auth = {"Authorization": f"Bearer {internal_token(SECRET)}"}
    sealed = rig.seal.seal("ann", {"email": "a@x.io"})
    body = {"user_id": "ann", "product_id": "p", "sealed": sealed}
    resp = await rig.api.post("/v1/subscriptions", json=body)
    assert resp.status == 401
    assert (await resp.json(content_type=None))["type"].endswith("/unauthorized")
    resp = await rig.api.post(
        "/v1/subscriptions", json=body, headers={"Authorization": "Bearer wrong"}
    )
    assert resp.status == 401

    async def problem(payload: object, status: int) -> str:
        resp = await rig.api.post("/v1/subscriptions", json=payload, headers=auth)
        doc = await resp.json(content_type=None)
        assert resp.status == status, doc
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        return str(doc.get("detail", ""))

    # Sealed for another shopper, without any address, not sealed at all, unknown fields.
    assert "not sealed for" in await problem({**body, "user_id": "bob"}, 422)
    no_address = rig.seal.seal("ann", {"shipping_address": {"city": "Lyon"}})
    assert "neither" in await problem({**body, "sealed": no_address}, 422)
    await problem({**body, "sealed": "plain@text.io"}, 422)
    await problem({**body, "extra": 1}, 422)
    await problem({**body, "product_id": "has space"}, 422)

    resp = await rig.api.post("/v1/subscriptions", json=body, headers=auth)
    assert resp.status == 200
    assert await resp.json() == {
        "product_id": "p", "user_id": "ann", "subscribed": True, "channels": ["email"]
    }
    resp = await rig.api.delete("/v1/subscriptions/p/ann", headers=auth)
    assert (await resp.json())["removed"] is True
    resp = await rig.api.get("/healthz")
    assert resp.status == 200 and (await resp.json())["ok"] is True
    resp = await rig.api.get("/metrics")
    assert "flashsale_notifier_feed_index" in await resp.text()
    resp = await rig.api.get("/nowhere", headers=auth)
    assert resp.status == 404
