"""The gateway as shoppers meet it: a real gateway process in front of a real 3-node
Raft cluster (tests/support/cluster.py), everything over real HTTP."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
import pytest

from gateway.identity import issue_token
from gateway.problems import PROBLEM_BASE
from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.cluster

READY_TIMEOUT_S = 30.0
SHORT_CIRCUITS = "flashsale_gateway_sold_out_short_circuits_total"
RACE_UNITS = 100
RACE_SHOPPERS = 250  # each sends two requests at once: 500 requests for 100 units
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)
ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "US"}


class Shopper:
    """One shopper talking to one gateway."""

    def __init__(self, session: aiohttp.ClientSession, base: str, secret: str, user: str) -> None:
        self.session = session
        self.base = base
        self.user = user
        self.headers = {"Authorization": f"Bearer {issue_token(secret, user, 600)}"}

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.session.request(
            method, self.base + path, json=body, headers=headers, timeout=HTTP_TIMEOUT
        ) as resp:
            return resp.status, await resp.json(content_type=None), dict(resp.headers)

    async def add(self, pid: str, quantity: int = 1, *, key: str | None = None) -> Any:
        body = {"user_id": self.user, "product_id": pid, "quantity": quantity}
        return await self.call("POST", "/add-to-cart", body, key=key)

    async def checkout(self, cart_id: str) -> Any:
        body = {"user_id": self.user, "cart_id": cart_id, "payment_method": "pm_card_visa",
                "shipping_address": ADDRESS}
        return await self.call("POST", "/checkout", body)


def _create(cluster: LocalCluster, pid: str, stock: int, **extra: Any) -> None:
    answer = cluster.submit([{"type": "create_product", "key": f"create-{pid}",
                              "product_id": pid, "name": pid, "price_minor": 2500,
                              "total_stock": stock, **extra}])
    assert answer["results"][0]["ok"], answer


async def _poll(check: Callable[[], Any], timeout_s: float = READY_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


async def _ready(session: aiohttp.ClientSession, base: str) -> None:
    async def ready() -> bool:
        async with session.get(base + "/readyz") as resp:
            return resp.status == 200

    await _poll(ready)


async def _available(session: aiohttp.ClientSession, base: str, pid: str) -> int:
    async with session.get(f"{base}/inventory/{pid}") as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        assert int(resp.headers["X-Ledger-Index"]) >= 1
        return int(body["available_quantity"])


async def _metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _base(cluster: LocalCluster, gateway_id: str = "g1") -> str:
    return cluster.config.gateway(gateway_id).listen.url


async def test_shopping_through_the_gateway(local_cluster: Callable[..., LocalCluster]) -> None:
    cluster = local_cluster(n_nodes=3, gateways=1)
    cluster.start()
    _create(cluster, "tee", 5)
    _create(cluster, "cap", 5)
    base = _base(cluster)
    async with aiohttp.ClientSession() as session:
        await _ready(session, base)
        # Both kinds of process keep their heaps (cluster/heap.py): the keeper's first
        # pass is a full collection, observed at once.
        gc_full = 'gc_pause_seconds_count{generation="2"}'
        assert await _metric(session, base, "flashsale_gateway_" + gc_full) >= 1
        node_text = cluster.metrics(cluster.wait_for_leader())
        assert re.search(r"flashsale_node_" + re.escape(gc_full) + r" [1-9]", node_text)
        alice = Shopper(session, base, cluster.secret, "alice")
        mallory = Shopper(session, base, cluster.secret, "mallory")

        status, held, headers = await alice.add("tee", 2, key="first-try")
        assert status == 200, held
        assert headers["Idempotency-Key"] == "first-try"
        assert held["success"] is True and held["reservation_expiry"].endswith("Z")
        # A retry (same key) is the same hold, not a second one.
        status, again, _ = await alice.add("tee", 2, key="first-try")
        assert status == 200 and (again["hold_id"], again["cart_id"]) == (
            held["hold_id"], held["cart_id"])
        product = cluster.get(cluster.wait_for_leader(), "/v1/products/tee")["product"]
        assert product["available"] == 3

        status, order, _ = await alice.checkout(held["cart_id"])
        assert status == 200, order
        assert order["payment_status"] == "pending"
        assert order["inventory_status"] == "confirmed"
        assert order["amount"] == "50.00"

        status, seen, _ = await alice.call("GET", f"/orders/{order['order_id']}")
        assert status == 200 and seen["order_id"] == order["order_id"]
        status, body, _ = await mallory.call("GET", f"/orders/{order['order_id']}")
        assert status == 404 and body["type"] == PROBLEM_BASE + "unknown-order"
        status, body, _ = await mallory.call("GET", f"/cart/{held['cart_id']}")
        assert status == 404

        # The shapes of the errors a shop front shows.
        status, body, _ = await alice.add("nothing-here")
        assert (status, body["type"]) == (404, PROBLEM_BASE + "unknown-product")
        status, body, _ = await alice.call(
            "POST", "/add-to-cart", {"user_id": "bob", "product_id": "cap", "quantity": 1}
        )
        assert (status, body["type"]) == (403, PROBLEM_BASE + "user-mismatch")

    # SIGTERM: the gateway finishes and exits cleanly.
    assert cluster.stop_node("g1") == 0
    assert '"gateway stopped"' in cluster.log_path("g1").read_text()


async def test_a_race_for_scarce_stock(local_cluster: Callable[..., LocalCluster]) -> None:
    cluster = local_cluster(n_nodes=3, gateways=2)
    cluster.start()
    _create(cluster, "drop", RACE_UNITS, per_user_limit=1)
    bases = [_base(cluster, "g1"), _base(cluster, "g2")]
    async with aiohttp.ClientSession() as session:
        for base in bases:
            await _ready(session, base)
        # Shoppers each trying twice at once, once through each gateway.
        tries = [
            Shopper(session, base, cluster.secret, f"s{i}")
            for i in range(RACE_SHOPPERS)
            for base in bases
        ]
        outcomes = await asyncio.gather(*(s.add("drop") for s in tries))
        won = [(s, body) for s, (status, body, _) in zip(tries, outcomes, strict=True)
               if status == 200]
        lost = [body for status, body, _ in outcomes if status != 200]
        assert len(won) == RACE_UNITS
        assert len({s.user for s, _ in won}) == RACE_UNITS  # nobody over the per-shopper limit
        assert {b["type"] for b in lost} <= {
            PROBLEM_BASE + "sold-out", PROBLEM_BASE + "limit-reached"}, lost
        leader = cluster.wait_for_leader()
        assert cluster.get(leader, "/v1/products/drop")["product"]["available"] == 0

        # Every gateway's cache learns it is gone, then refuses without asking the leader.
        for base in bases:
            await _poll(partial(_zero, session, base, "drop"))
        for base in bases:
            refused_before = await _metric(session, base, SHORT_CIRCUITS)
            late = Shopper(session, base, cluster.secret, "late")
            status, body, _ = await late.add("drop")
            assert (status, body["type"], body["source"]) == (
                409, PROBLEM_BASE + "sold-out", "edge-cache")
            assert await _metric(session, base, SHORT_CIRCUITS) == refused_before + 1

        # One winner gives a unit back: the caches see it and holds are accepted again.
        winner, hold = won[0]
        status, body, _ = await winner.call(
            "DELETE", f"/cart/{hold['cart_id']}/items/{hold['hold_id']}"
        )
        assert status == 200, body
        for base in bases:
            await _poll(partial(_positive, session, base, "drop"))
        status, body, _ = await Shopper(session, bases[1], cluster.secret, "late").add("drop")
        assert status == 200, body

        # Units a hold kept until it expired come back at every gateway too.
        _create(cluster, "flash", 1, hold_ttl_ms=1000)
        status, body, _ = await Shopper(session, bases[0], cluster.secret, "slow").add("flash")
        assert status == 200, body
        hold_path = f"/v1/holds/{body['hold_id']}"

        async def expired() -> bool:
            return bool(cluster.get(leader, hold_path)["hold"]["status"] == "expired")

        await _poll(expired)
        expired_at = cluster.status(leader)["ledger_index"]
        for base in bases:
            await _poll(partial(_caught_up_with, session, base, "flash", expired_at))
        status, body, _ = await Shopper(session, bases[1], cluster.secret, "next").add("flash")
        assert status == 200, body


async def _caught_up_with(
    session: aiohttp.ClientSession, base: str, pid: str, index: int
) -> bool:
    async with session.get(f"{base}/inventory/{pid}") as resp:
        body = await resp.json(content_type=None)
        return int(resp.headers["X-Ledger-Index"]) >= index and body["available_quantity"] == 1


async def _zero(session: aiohttp.ClientSession, base: str, pid: str) -> bool:
    return await _available(session, base, pid) == 0


async def _positive(session: aiohttp.ClientSession, base: str, pid: str) -> bool:
    return await _available(session, base, pid) > 0


async def test_leader_killed_during_writes(local_cluster: Callable[..., LocalCluster]) -> None:
    cluster = local_cluster(n_nodes=3, gateways=1)
    old_leader = cluster.start()
    _create(cluster, "bulk", BULK_UNITS)
    base = _base(cluster)
    async with aiohttp.ClientSession() as session:
        await _ready(session, base)
        shoppers = [Shopper(session, base, cluster.secret, f"w{i}") for i in range(20)]
        answers: list[Attempt] = []
        stop = asyncio.Event()

        async def keep_buying(shopper: Shopper) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                key = f"try-{n}"
                status, body, _ = await shopper.add("bulk", key=key)
                answers.append((shopper, key, status, body))

        writers = [asyncio.ensure_future(keep_buying(s)) for s in shoppers]
        await _poll(partial(_count_ok, answers, 20))
        cluster.kill_node(old_leader)
        new_leader = cluster.wait_for_leader(exclude=old_leader)
        ok_before = sum(1 for a in answers if a[2] == 200)
        await _poll(partial(_count_ok, answers, ok_before + 20))
        stop.set()
        await asyncio.gather(*writers)

        # Only successes and honest "try again" answers, never a wrong refusal.
        assert {a[2] for a in answers} <= {200, 503}, {a[2] for a in answers}
        for _, _, status, body in answers:
            if status == 503:
                assert body["type"] in RETRYABLE, body
        # Retrying every request with its key gives the first outcome: the same hold for an
        # acknowledged one, and the real outcome for one that was left uncertain.
        for shopper, key, status, body in answers:
            again_status, again, _ = await shopper.add("bulk", key=key)
            assert again_status == 200, again
            if status == 200:
                assert again["hold_id"] == body["hold_id"]

    # Every acknowledged hold survived the leader's death, and nothing was oversold.
    held = {b["hold_id"] for _, _, s, b in answers if s == 200}
    for hold_id in held:
        hold = cluster.get(new_leader, f"/v1/holds/{hold_id}")["hold"]
        assert (hold["status"], hold["product_id"]) == ("active", "bulk")
    product = cluster.get(new_leader, "/v1/products/bulk")["product"]
    assert product["reserved"] == len(answers)  # one unit per request, none twice
    assert product["available"] + product["reserved"] + product["sold"] == BULK_UNITS


BULK_UNITS = 10_000
RETRYABLE = {PROBLEM_BASE + slug for slug in ("no-leader", "commit-unknown", "overloaded",
                                              "unavailable")}
Attempt = tuple[Shopper, str, int, dict[str, Any]]


async def _count_ok(answers: list[Attempt], at_least: int) -> bool:
    return sum(1 for a in answers if a[2] == 200) >= at_least
