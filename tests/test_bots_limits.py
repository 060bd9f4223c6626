"""Rate limits, lists and heuristics on the real gateway application (gateway.defences),
over real HTTP, with the real Redis shared by two gateways, and with Redis unreachable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from bots.heuristics import WEIGHTS
from gateway.defences import BOTS
from gateway.problems import PROBLEM_BASE
from tests.support.bots import (
    REDIS_URL,
    Gateway,
    close_gateways,
    cluster_name,
    internal,
    shopper,
    start_gateway,
)


async def _problem(resp: ClientResponse) -> dict[str, Any]:
    assert resp.content_type == "application/problem+json", await resp.text()
    body: dict[str, Any] = await resp.json(content_type=None)
    return body


def _slug(body: dict[str, Any]) -> str:
    return str(body["type"]).removeprefix(PROBLEM_BASE)


async def _hold(gw: Gateway, user: str, headers: dict[str, str] | None = None) -> ClientResponse:
    return await gw.client.post(
        "/add-to-cart",
        json={"user_id": user, "product_id": "tee", "quantity": 1},
        headers=headers or shopper(user),
    )


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    """Started gateways, closed (and their Redis keys removed) at the end."""
    started: list[Gateway] = []
    yield started
    await close_gateways(started)


_start = start_gateway


# -- rate limits ---------------------------------------------------------------------


async def test_a_client_over_the_ip_limit_gets_429_and_recovers_after_the_window(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, ip_rate=1.0, ip_burst=3)
    for _ in range(3):
        assert (await gw.client.get("/products")).status == 200
    refused = await gw.client.get("/products")
    body = await _problem(refused)
    assert refused.status == 429 and _slug(body) == "rate-limited"
    assert refused.headers["Retry-After"] == "1"  # under 1 s rounded up, never 0
    assert body["limit"] == "ip" and body["retry_after_s"] == 1
    await asyncio.sleep(float(refused.headers["Retry-After"]) + 0.05)  # one token back
    assert (await gw.client.get("/products")).status == 200
    assert (await gw.client.get("/products")).status == 429
    # Another IP has a bucket of its own.
    other = await gw.other_client("127.0.0.2")
    try:
        assert (await other.get("/products")).status == 200
    finally:
        await other.close()
    # Health, readiness, metrics and the page's assets are never limited.
    for path in ("/healthz", "/metrics", "/static/shop.js"):
        assert (await gw.client.get(path)).status == 200, path
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'flashsale_gateway_bot_decisions_total{decision="limited",reason="ip-rate"} 2.0' in (
        metrics
    )


async def test_writes_are_limited_per_shopper_across_tokens_and_per_token(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, shopper_rate=0.01, shopper_burst=2,
                      token_rate=0.01, token_burst=3)  # fmt: skip
    gw.create("tee", 100)
    # Two tokens of one shopper (different lifetimes: different tokens) share a bucket.
    assert (await _hold(gw, "alice", shopper("alice", 600))).status == 200
    assert (await _hold(gw, "alice", shopper("alice", 900))).status == 200
    refused = await _hold(gw, "alice", shopper("alice", 600))
    body = await _problem(refused)
    assert refused.status == 429 and body["limit"] == "shopper"
    assert int(refused.headers["Retry-After"]) >= 99  # 1 token at 0.01/s
    # Reads of the same shopper are limited per IP only.
    assert (await gw.client.get("/products", headers=shopper("alice"))).status == 200
    # Another shopper from the same IP is not held back by alice's bucket.
    assert (await _hold(gw, "bob")).status == 200
    # The token bucket is smaller than the shopper's here: 3 writes per token.
    gw2 = await _start(gateways, tmp_path, shopper_rate=0.01, shopper_burst=10,
                       token_rate=0.01, token_burst=1)  # fmt: skip
    gw2.create("tee", 100)
    token = shopper("carol", 600)
    assert (await _hold(gw2, "carol", token)).status == 200
    refused = await _hold(gw2, "carol", token)
    assert refused.status == 429 and (await _problem(refused))["limit"] == "token"
    assert (await _hold(gw2, "carol", shopper("carol", 700))).status == 200


async def test_two_gateways_sharing_redis_share_the_limits(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    name = cluster_name()
    a = await _start(gateways, tmp_path, name, redis_url=REDIS_URL, ip_rate=0.01, ip_burst=4)
    b = await _start(gateways, tmp_path, name, redis_url=REDIS_URL, ip_rate=0.01, ip_burst=4)
    statuses = [
        (await gw.client.get("/products")).status for gw in (a, b, a, b, a, b)
    ]
    assert statuses == [200, 200, 200, 200, 429, 429]
    # A gateway of another cluster on the same Redis has buckets of its own.
    c = await _start(gateways, tmp_path, redis_url=REDIS_URL, ip_rate=0.01, ip_burst=4)
    assert (await c.client.get("/products")).status == 200
    metrics = await (await a.client.get("/metrics")).text()
    assert "flashsale_gateway_bot_redis_fallback 0.0" in metrics
    doc = await (await a.client.get("/internal/bots", headers=internal())).json()
    assert doc["redis"] == {"configured": True, "ok": True}


async def test_without_redis_the_gateway_limits_locally_and_says_so(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, redis_url="redis://127.0.0.1:1/0", ip_rate=0.01,
                      ip_burst=3)  # fmt: skip
    statuses = [(await gw.client.get("/products")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]  # not unlimited, not everyone refused
    metrics = await (await gw.client.get("/metrics")).text()
    assert "flashsale_gateway_bot_redis_fallback 1.0" in metrics
    fallbacks = [line for line in metrics.splitlines()
                 if line.startswith("flashsale_gateway_bot_redis_fallbacks_total ")]  # fmt: skip
    assert fallbacks and float(fallbacks[0].split()[1]) >= 1
    doc = await (await gw.client.get("/internal/bots", headers=internal())).json()
    assert doc["redis"] == {"configured": True, "ok": False}
    # Another IP is still served: the fallback limits per client, not everyone.
    other = await gw.other_client("127.0.0.3")
    try:
        assert (await other.get("/products")).status == 200
    finally:
        await other.close()


async def test_a_slow_redis_counts_as_failed(gateways: list[Gateway], tmp_path: Path) -> None:
    gw = await _start(gateways, tmp_path, redis_url=REDIS_URL, redis_timeout_ms=1, ip_burst=2,
                      ip_rate=0.01)  # fmt: skip
    limiter = gw.app[BOTS].limiter
    assert limiter.remote is not None
    real_take = limiter.remote.take

    async def slow(limits: Any) -> Any:
        await asyncio.sleep(0.05)  # Redis answering slower than redis_timeout_ms
        return await real_take(limits)

    limiter.remote.take = slow  # type: ignore[method-assign]
    limiter.retry_s = 0.0  # try Redis on every request (the default: once a second)
    statuses = [(await gw.client.get("/products")).status for _ in range(3)]
    assert statuses == [200, 200, 429] and limiter.falling_back
    # Redis answers in time again: after the retry period the limiter goes back to it.
    limiter.remote.take = real_take  # type: ignore[method-assign]
    limiter.timeout_s = 1.0  # the first call also loads the script: give it room
    assert (await gw.client.get("/products")).status == 200  # a fresh shared bucket
    assert not limiter.falling_back


async def test_rate_limits_can_be_switched_off_alone(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, rate_limits=False, ip_rate=0.01, ip_burst=1)
    assert all([(await gw.client.get("/products")).status == 200 for _ in range(5)])


async def test_bots_disabled_limits_nothing_and_adds_nothing(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, enabled=False, ip_rate=0.01, ip_burst=1,
                      block_score=1)  # fmt: skip
    assert BOTS not in gw.app
    gw.create("tee", 100)
    for i in range(5):
        assert (await gw.client.get("/products", headers={"User-Agent": ""})).status == 200
        assert (await _hold(gw, f"guest{i}")).status == 200
    doc = await (await gw.client.get("/internal/bots", headers=internal())).json()
    assert doc["enabled"] is False and not any(doc["defences"].values())
    refused = await gw.client.put(
        "/internal/bots/settings", json={"block_score": 5}, headers=internal()
    )
    assert refused.status == 409 and _slug(await _problem(refused)) == "bots-disabled"


# -- lists ---------------------------------------------------------------------------


async def test_block_listed_clients_get_403_and_allow_listed_are_never_limited(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, ip_rate=0.01, ip_burst=2)
    gw.create("tee", 100)
    lists = gw.app[BOTS].lists
    lists.add("block_shoppers", "mallory")
    refused = await _hold(gw, "mallory")
    body = await _problem(refused)
    assert refused.status == 403 and _slug(body) == "blocked" and body["reasons"] == ["block-list"]
    assert gw.cluster.commands_submitted == 0
    lists.add("allow_ips", "127.0.0.0/8")
    assert all([(await gw.client.get("/products")).status == 200 for _ in range(10)])
    # Block beats allow: the same network blocked refuses even the allowed.
    lists.add("block_ips", "127.0.0.1")
    assert (await gw.client.get("/products")).status == 403
    other = await gw.other_client("127.0.0.4")
    try:
        assert (await other.get("/products")).status == 200
    finally:
        await other.close()
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'decision="blocked",reason="block-list"} 2.0' in metrics
    assert 'decision="allowed",reason="allow-list"} 11.0' in metrics


async def test_a_non_ascii_bearer_token_is_401_not_500(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    """A garbled token is no token (a public read still answers); before the fix it was a
    TypeError: a 500 and a logged traceback per request, ahead of the lists and limits."""
    gw = await _start(gateways, tmp_path)
    gw.create("tee", 10)
    for token in ("v1.abc.\u00e9", "v1.\u00e9bc.abc"):
        mine = {"Authorization": f"Bearer {token}"}
        assert (await gw.client.get("/products", headers=mine)).status == 200
        hold = await gw.client.post(
            "/reserve-inventory", json={"product_id": "tee", "quantity": 1}, headers=mine
        )
        assert hold.status in (401, 403), await hold.text()
    internal = await gw.client.get("/internal/bots", headers={"Authorization": "Bearer \u00e9"})
    assert internal.status == 401


async def test_an_allow_listed_shopper_skips_limits_and_heuristics(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, shopper_rate=0.01, shopper_burst=1, block_score=10)
    gw.create("tee", 100)
    gw.app[BOTS].lists.add("allow_shoppers", "loadtester")
    headers = {**shopper("loadtester"), "User-Agent": "curl/8.5.0"}
    for _ in range(3):
        assert (await _hold(gw, "loadtester", headers)).status == 200


# -- heuristics ----------------------------------------------------------------------


async def test_a_script_spreading_over_many_accounts_is_blocked_a_browser_is_not(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, accounts_per_ip=3, ip_burst=1000, ip_rate=1000.0)
    gw.create("tee", 100)
    script = {"User-Agent": "python-requests/2.32.3"}
    for i in range(3):
        assert (await _hold(gw, f"acct{i}", {**shopper(f"acct{i}"), **script})).status == 200
    refused = await _hold(gw, "acct3", {**shopper("acct3"), **script})
    body = await _problem(refused)
    assert refused.status == 403 and _slug(body) == "blocked"
    assert body["reasons"] == ["scripted-ua", "many-accounts"]
    assert body["score"] == WEIGHTS["scripted-ua"] + WEIGHTS["many-accounts"]
    # A browser from the same IP (an office behind one address) still shops: many
    # accounts alone stay under the block score.
    assert (await _hold(gw, "acct4")).status == 200
    # So does headless chromium (our own browser tests).
    headless = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0.0.0"}
    assert (await gw.client.get("/products", headers=headless)).status == 200


async def test_an_account_farm_is_counted_as_it_queues_and_blocked_beyond_twice_the_allowance(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    # A place in line is personal, so a farm has to queue every account: each ticket
    # counts one more shopper for its address. Allowance 3: 4..6 score many-accounts (50,
    # a household or an office still shops), the 7th is an account farm (100): blocked.
    gw = await _start(gateways, tmp_path, accounts_per_ip=3, ip_burst=1000, ip_rate=1000.0,
                      waiting_room=True)  # fmt: skip
    gw.create("tee", 100)
    tickets = []
    for i in range(6):
        resp = await gw.client.post("/queue", headers=shopper(f"farm{i}"))
        assert resp.status == 201, await resp.text()
        tickets.append((await resp.json())["ticket"])
    # The household-sized part shops normally: admitted, and its write goes through.
    place = await (await gw.client.get(f"/queue/{tickets[0]}", headers=shopper("farm0"))).json()
    assert place["admitted"]  # the first in line, in at once
    admitted = {**shopper("farm0"), "X-Admission": place["admission"]}
    held = await _hold(gw, "farm0", admitted)
    assert held.status == 200, await held.text()
    refused = await gw.client.post("/queue", headers=shopper("farm6"))
    body = await _problem(refused)
    assert refused.status == 403 and _slug(body) == "blocked"
    assert body["reasons"] == ["account-farm"] and body["score"] == WEIGHTS["account-farm"]
    # From then on the address is refused outright: the tickets it holds cannot be
    # followed, and its accounts cannot write.
    poll = await gw.client.get(f"/queue/{tickets[5]}", headers=shopper("farm5"))
    assert poll.status == 403 and (await _problem(poll))["reasons"] == ["account-farm"]
    assert (await _hold(gw, "farm0", admitted)).status == 403
    # Another address is apart; a block-listed one cannot even take a ticket.
    other = await gw.other_client("127.0.0.2")
    try:
        assert (await other.post("/queue", headers=shopper("neighbour"))).status == 201
        gw.app[BOTS].lists.add("block_ips", "127.0.0.2")
        listed = await other.post("/queue", headers=shopper("neighbour"))
        assert listed.status == 403 and (await _problem(listed))["reasons"] == ["block-list"]
    finally:
        await other.close()


async def test_noted_replays_block_the_client_and_the_score_is_live(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path)
    gw.create("tee", 100)
    bots = gw.app[BOTS]
    now = time.time()
    bots.suspicion.note("10.9.9.9", "mallory", "solution-replay", now)
    bots.suspicion.note("10.9.9.8", "mallory", "solution-replay", now)
    refused = await _hold(gw, "mallory")
    assert refused.status == 403
    assert (await _problem(refused))["reasons"] == ["solution-replay"]
    assert (await _hold(gw, "alice")).status == 200
    # Missing User-Agent: 60, under the default 100; the operator lowers the bar.
    assert (await gw.client.get("/products", headers={"User-Agent": ""})).status == 200
    bots.policy.block_score = 60
    assert (await gw.client.get("/products", headers={"User-Agent": ""})).status == 403


async def test_heuristics_can_be_switched_off_alone(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, heuristics=False, block_score=1)
    assert (await gw.client.get("/products", headers={"User-Agent": ""})).status == 200
