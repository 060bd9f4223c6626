"""A purchase end to end: a real 3-node cluster, a real gateway process and the payments
sandbox process (`flashsale payments-sandbox`), everything over real HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from cluster.config import load_config
from gateway.identity import issue_token
from tests.support.cluster import LocalCluster, free_ports

pytestmark = pytest.mark.cluster

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)
STARTUP_TIMEOUT_S = 30.0
ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "US"}


def _with_payments(cluster: LocalCluster) -> str:
    """Add a [payments] section (both providers on a sandbox) to the cluster's config;
    the sandbox's base URL."""
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    gateway = cluster.config.gateways[0].listen.url
    section = "\n".join([
        "[payments]",
        'providers = ["stripe", "paypal"]',
        f'stripe_api_base = "{base}"',
        f'paypal_api_base = "{base}"',
        f'sandbox_listen = "127.0.0.1:{port}"',
        f'sandbox_webhook_url = "{gateway}/webhooks"',
        "charge_timeout_ms = 5000",
        "",
    ])
    with open(cluster.config_path, "a", encoding="utf-8") as f:
        f.write("\n" + section)
    cluster.config = load_config(cluster.config_path, env={})
    return base


def _start_sandbox(cluster: LocalCluster, base: str) -> subprocess.Popen[bytes]:
    with open(cluster.log_path("payments-sandbox"), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "payments-sandbox", "--config",
             str(cluster.config_path)],
            stdout=out, stderr=subprocess.STDOUT, cwd=cluster.dir,
        )
    # Killed and waited for with the cluster's own processes, pass or fail.
    cluster.started_pids.append(proc.pid)
    cluster.procs["payments-sandbox"] = proc
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            if cluster._http("GET", base + "/healthz", timeout_s=1.0).status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the sandbox did not start\n{cluster.tails()}")
        time.sleep(0.05)


async def test_add_to_cart_checkout_and_pay_through_a_real_gateway(
    local_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = local_cluster(n_nodes=3, gateways=1)
    base = _with_payments(cluster)
    _start_sandbox(cluster, base)
    cluster.start()
    cluster.submit([{"type": "create_product", "key": "create-shoe", "product_id": "shoe",
                     "name": "Shoe", "price_minor": 2500, "total_stock": 10}])
    gateway = cluster.config.gateways[0].listen.url
    headers = {"Authorization": f"Bearer {issue_token(cluster.secret, 'alice', 600)}"}

    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:

        async def call(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with http.post(gateway + path, json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        status, held = await call("/add-to-cart", {"user_id": "alice", "product_id": "shoe",
                                                   "quantity": 2})
        assert status == 200, held
        status, order = await call("/checkout", {
            "user_id": "alice", "cart_id": held["cart_id"], "payment_method": "pm_card_visa",
            "shipping_address": ADDRESS,
        })
        assert status == 200, order
        assert order["amount"] == "50.00"
        payment = {"order_id": order["order_id"], "payment_method": "pm_card_visa",
                   "amount": "50.00"}
        status, paid = await call("/payment", payment)
        assert status == 200, paid
        assert paid["success"] is True and paid["payment_status"] == "completed"
        status, again = await call("/payment", payment)
        assert status == 200 and again["transaction_id"] == paid["transaction_id"]

        async with http.get(f"{gateway}/orders/{order['order_id']}", headers=headers) as resp:
            seen = await resp.json()
        assert seen["status"] == "completed" and seen["payment_status"] == "completed"
        async with http.get(f"{base}/_sandbox/stats") as resp:
            stats = await resp.json()
        assert stats["charges_by_order"] == {order["order_id"]: 1}

    # Every node holds the sale: two units sold, none reserved.
    cluster.wait_converged()
    for node_id in cluster.node_ids:
        product = cluster.get(node_id, "/v1/products/shoe")["product"]
        assert (product["sold"], product["reserved"], product["available"]) == (2, 0, 8)
    await asyncio.sleep(0)
