"""The notifier against a real cluster: a Raft node and a gateway as processes, the
notifier as ``python -m cli notifier``, a real SMTP server and an SMS endpoint.

A shopper subscribes through the gateway, another checks out with an email and a phone
and, holding the last unit, sells the product out: the buyer gets the order notice by
email and SMS, the subscriber the sold-out notice, each exactly once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cluster.config import load_config
from gateway.identity import issue_token
from tests.support.cluster import LocalCluster, free_ports
from tests.support.notifier_rig import (
    MAIL_FROM,
    SMS_ACCOUNT,
    SMS_FROM,
    SMS_TOKEN,
    SmsSink,
    SmtpSink,
    by_recipient,
    eventually,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "US"}


def add_notifier(cluster: LocalCluster, smtp: SmtpSink, sms: SmsSink) -> int:
    """Append a [notifier] section to the cluster's config; its listen port."""
    port = free_ports(1)[0]
    section = f"""
[notifier]
listen = "127.0.0.1:{port}"
feed_wait_ms = 1000
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
smtp_starttls = false
mail_from = "{MAIL_FROM}"
sms_url = "{sms.url}"
sms_account = "{SMS_ACCOUNT}"
sms_from = "{SMS_FROM}"
retry_first_ms = 100
retry_max_ms = 500
"""
    with cluster.config_path.open("a", encoding="utf-8") as f:
        f.write(section)
    cluster.config = load_config(cluster.config_path, env={})
    return port


def start_notifier(cluster: LocalCluster) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update(FLASHSALE_SMS_TOKEN=SMS_TOKEN, PYTHONUNBUFFERED="1")
    with open(cluster.log_path("notifier"), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "notifier", "--config", str(cluster.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    cluster.started_pids.append(proc.pid)  # killed by the fixture, pass or fail
    return proc


async def test_order_and_sold_out_notices_through_a_real_cluster(
    local_cluster: Callable[..., LocalCluster],
) -> None:
    smtp, sms = SmtpSink(), SmsSink()
    smtp.start()
    await sms.start()
    notifier: subprocess.Popen[bytes] | None = None
    try:
        cluster = local_cluster(n_nodes=1, gateways=1)
        port = add_notifier(cluster, smtp, sms)
        await asyncio.to_thread(cluster.start)
        notifier = start_notifier(cluster)
        gateway = cluster.config.gateways[0].listen.url
        await asyncio.to_thread(
            cluster.submit,
            [
                {"type": "create_product", "key": "c1", "product_id": "drop",
                 "name": "Last Drop", "price_minor": 2500, "total_stock": 1},
            ],
        )

        async with aiohttp.ClientSession() as http:

            async def call(method: str, path: str, user: str, body: Any) -> dict[str, Any]:
                token = issue_token(cluster.secret, user, 600)
                async with http.request(
                    method, gateway + path, json=body,
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    answer: dict[str, Any] = await resp.json(content_type=None)
                    assert resp.status == 200, (path, answer)
                    return answer

            async def notifier_up() -> bool:
                assert notifier.poll() is None, cluster.tails()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(notifier_up, 30, "the notifier to serve")
            subscribed = await call(
                "POST", "/products/drop/subscribe", "fan", {"email": "fan@example.com"}
            )
            assert subscribed["channels"] == ["email"]
            held = await call(
                "POST", "/add-to-cart", "buyer",
                {"user_id": "buyer", "product_id": "drop", "quantity": 1},
            )
            order = await call(
                "POST", "/checkout", "buyer",
                {"user_id": "buyer", "cart_id": held["cart_id"], "payment_method": "pm_card_visa",
                 "shipping_address": ADDRESS, "email": "buyer@example.com",
                 "phone": "+15550009999"},
            )

            def delivered() -> bool:
                mails = by_recipient(smtp.received())
                fan, buyer = mails.get("fan@example.com", []), mails.get("buyer@example.com", [])
                return len(fan) == 1 and len(buyer) == 1 and len(sms.messages) == 1

            # The buyer's hold sold it out before the buyer gave any address: the buyer is
            # told about the order only (email + SMS), the subscriber about the sell-out.
            await eventually(delivered, 30, "the order and sold-out notices")
            mails = by_recipient(smtp.received())
            [placed] = mails["buyer@example.com"]
            subject = f"Your flashsale order {order['order_id']} is placed"
            assert placed.message["Subject"] == subject
            assert mails["fan@example.com"][0].message["Subject"] == "Last Drop is sold out"
            assert sms.messages[0].to == "+15550009999"
            assert order["order_id"] in sms.messages[0].body

            async def outbox_settled() -> bool:
                # A message is received before its outbox row is marked sent.
                async with http.get(
                    f"http://127.0.0.1:{port}/v1/outbox",
                    headers={"Authorization": f"Bearer {cluster.token}"},
                ) as resp:
                    summary = await resp.json()
                return bool(summary["rows"] == {"sent": 3} and not summary["pending"])

            await eventually(outbox_settled, 30, "every outbox row marked sent")
        notifier.terminate()
        assert await asyncio.to_thread(notifier.wait, 30) == 0
        assert smtp.count() == 2 and len(sms.messages) == 1
    finally:
        if notifier is not None and notifier.poll() is None:
            notifier.kill()
            notifier.wait()
        await sms.stop()
        smtp.stop()
