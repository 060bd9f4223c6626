"""The gateway's in-flight caps (gateway.overload) through real HTTP, on an in-process ledger.

Requests are held inside the gateway by a cluster whose answers wait on a gate the test
opens, so "how many are in flight" is exact, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from cluster.client import SubmitResult
from cluster.config import ConfigError
from cluster.errors import Overloaded
from gateway.metrics import GatewayMetrics
from gateway.overload import (
    MIN_WRITE_LIMIT,
    InFlight,
    InFlightLimits,
    LoopLag,
    loop_lag,
    next_write_limit,
    request_kind,
)
from gateway.problems import PROBLEM_BASE
from gateway.server import create_app
from tests.test_gateway_api import InProcessCluster, Shop, _config

MAX_REQUESTS = 4
MAX_WRITES = 2


class GatedCluster(InProcessCluster):
    """Submits, and cart reads, wait until the test opens the gate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def _wait_gate(self) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1

    async def submit(
        self, commands: list[dict[str, Any]], *, deadline_s: float = 10.0
    ) -> SubmitResult:
        await self._wait_gate()
        return await super().submit(commands, deadline_s=deadline_s)

    async def get(self, path: str, **kwargs: Any) -> dict[str, Any]:
        if path.startswith("/v1/carts/"):
            await self._wait_gate()
        return await super().get(path, **kwargs)


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    config = _config(
        tmp_path,
        max_in_flight_requests=MAX_REQUESTS,
        max_in_flight_writes=MAX_WRITES,
        max_batch=1,  # one write per submit: each held write is its own batch
        max_in_flight_batches=MAX_WRITES,
    )
    cluster = GatedCluster(config)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, "g1", cluster=cluster)))
    await client.start_server()
    try:
        yield Shop(client, cluster)
    finally:
        cluster.gate.set()
        await client.close()


def _gated(shop: Shop) -> GatedCluster:
    assert isinstance(shop.cluster, GatedCluster)
    return shop.cluster


async def _until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


async def _is_shed(resp: ClientResponse) -> bool:
    body = await resp.json(content_type=None)
    return (
        resp.status == 503
        and body["type"] == PROBLEM_BASE + "overloaded"
        and int(resp.headers["Retry-After"]) >= 1
    )


def _reserve(shop: Shop, user: str) -> asyncio.Task[tuple[int, dict[str, Any], Mapping[str, str]]]:
    return asyncio.create_task(shop.reserve(user, "p1"))


async def test_writes_over_their_cap_are_shed_with_retry_after_and_reads_keep_flowing(
    shop: Shop,
) -> None:
    cluster = _gated(shop)
    shop.create("p1", 100)
    await shop.synced()
    cluster.gate.clear()
    held = [_reserve(shop, f"u{i}") for i in range(MAX_WRITES)]
    await _until(lambda: cluster.waiting == MAX_WRITES)

    submitted = cluster.commands_submitted
    resp = await shop.client.post(
        "/add-to-cart",
        json={"user_id": "late", "product_id": "p1", "quantity": 1},
        headers=shop.auth("late"),
    )
    assert await _is_shed(resp)
    assert cluster.commands_submitted == submitted  # refused before any work

    inventory = await shop.client.get("/inventory/p1")  # a cached read: still served
    assert inventory.status == 200
    assert (await inventory.json())["available_quantity"] == 100

    cluster.gate.set()
    for task in held:
        assert (await task)[0] == 200
    # Recovered: the next write goes through.
    status, body, _ = await shop.reserve("late", "p1")
    assert status == 200, body


async def test_the_total_cap_sheds_reads_too_but_never_health_or_metrics(shop: Shop) -> None:
    cluster = _gated(shop)
    shop.create("p1", 100)
    await shop.synced()
    status, placed, _ = await shop.reserve("alice", "p1")
    assert status == 200
    cart = placed["cart_id"]
    cluster.gate.clear()
    held = [
        asyncio.create_task(shop.client.get(f"/cart/{cart}", headers=shop.auth("alice")))
        for _ in range(MAX_REQUESTS)
    ]
    await _until(lambda: cluster.waiting == MAX_REQUESTS)

    assert await _is_shed(await shop.client.get("/inventory/p1"))
    for path in ("/healthz", "/readyz", "/metrics"):
        resp = await shop.client.get(path)
        assert resp.status == 200, path
    text = await (await shop.client.get("/metrics")).text()
    assert 'flashsale_gateway_requests_shed_total{kind="read"} 1.0' in text
    assert f'flashsale_gateway_in_flight_requests{{kind="read"}} {MAX_REQUESTS}.0' in text

    cluster.gate.set()
    for task in held:
        assert (await task).status == 200
    assert (await shop.client.get("/inventory/p1")).status == 200


def test_requests_are_counted_as_reads_or_writes_except_operations_and_streams() -> None:
    assert request_kind("GET", "/inventory/p1") == "read"
    assert request_kind("HEAD", "/products") == "read"
    assert request_kind("POST", "/add-to-cart") == "write"
    assert request_kind("DELETE", "/cart/c/items/h") == "write"
    # A payment waits on its provider: a cap of its own. A queue ticket commits nothing.
    assert request_kind("POST", "/payment") == "payment"
    assert request_kind("POST", "/queue") == "read"
    assert request_kind("POST", "/session/guest") == "read"
    for path in ("/healthz", "/readyz", "/metrics", "/events/inventory", "/internal/bots"):
        assert request_kind("GET", path) is None


def test_the_decision_keeps_room_for_reads() -> None:
    limits = InFlightLimits(max_requests=4, max_writes=2)
    assert limits.admits("write", reads=0, writes=1)
    assert not limits.admits("write", reads=0, writes=2)
    assert limits.admits("read", reads=1, writes=2)
    assert not limits.admits("read", reads=2, writes=2)
    with pytest.raises(ValueError):
        InFlightLimits(max_requests=2, max_writes=2)


def test_payments_in_flight_have_their_own_cap_outside_reads_and_writes() -> None:
    """666 payments wait 2 s each at 333/s: neither the write cap nor the total may
    refuse them, and they may not take the room reads and writes need."""
    limits = InFlightLimits(max_requests=4, max_writes=2, max_payments=3)
    assert limits.admits("payment", reads=4, writes=2, payments=2)
    assert not limits.admits("payment", reads=0, writes=0, payments=3)
    assert limits.admits("read", reads=0, writes=0, payments=3)
    assert limits.admits("write", reads=0, writes=0, payments=3)
    assert InFlightLimits().max_payments == 2048


def test_the_caps_are_configurable_and_validated(tmp_path: Path) -> None:
    settings = _config(tmp_path, max_in_flight_requests=50, max_in_flight_writes=10)
    assert settings.gateway_settings.max_in_flight_requests == 50
    assert settings.gateway_settings.max_in_flight_writes == 10
    defaults = _config(tmp_path).gateway_settings
    assert (defaults.max_in_flight_requests, defaults.max_in_flight_writes) == (1024, 256)
    with pytest.raises(ConfigError, match="max_in_flight_writes=10 must be below"):
        _config(tmp_path, max_in_flight_requests=10, max_in_flight_writes=10)
    with pytest.raises(ConfigError, match="max_in_flight_writes=0"):
        _config(tmp_path, max_in_flight_writes=0)


def test_the_write_cap_follows_the_latency_of_answered_writes() -> None:
    target = 0.1
    # Slower than the target: shrinks by the ratio, at most halving per interval.
    assert next_write_limit(256, [0.2] * 10, target, stalled=False, ceiling=256) == 128
    assert next_write_limit(256, [5.0] * 10, target, stalled=False, ceiling=256) == 128
    # Faster: grows, at most 25 % per interval, never above the configured cap.
    grown = next_write_limit(100, [0.01] * 10, target, stalled=False, ceiling=256)
    assert grown == pytest.approx(125)
    assert next_write_limit(250, [0.01] * 10, target, stalled=False, ceiling=256) == 256
    # The 90th percentile decides: fast edge refusals do not hide slow commits.
    slow_tail = [0.0] * 8 + [0.2] * 2
    assert next_write_limit(256, slow_tail, target, stalled=False, ceiling=256) == 128
    # Never below the floor; a stalled interval halves; an idle one changes nothing.
    assert next_write_limit(10, [1.0], target, stalled=False, ceiling=256) == MIN_WRITE_LIMIT
    assert next_write_limit(128, [], target, stalled=True, ceiling=256) == 64
    assert next_write_limit(64, [], target, stalled=False, ceiling=256) == 64


def test_slow_writes_lower_the_cap_at_which_writes_are_shed() -> None:
    in_flight = InFlight(InFlightLimits(1024, 256), GatewayMetrics(), write_latency_target_ms=100)
    now = 0.0
    for _ in range(20):  # an interval of writes answered in 400 ms, four times the target
        assert in_flight.try_enter("write", now)
        in_flight.leave("write", 0.4)
    now += 0.1
    assert in_flight.try_enter("read", now)  # the next request starts a new interval
    assert in_flight.write_limit == 128
    for _ in range(128):
        assert in_flight.try_enter("write", now)
    assert not in_flight.try_enter("write", now), "the 129th write is shed"
    assert in_flight.try_enter("read", now), "reads keep their room"
    for _ in range(128):
        in_flight.leave("write", 0.01)  # now answered fast
    now += 0.1
    assert in_flight.try_enter("write", now)
    assert in_flight.write_limit == pytest.approx(128 * 1.25)  # recovers, 25 % per interval


def test_a_zero_target_keeps_the_fixed_cap(tmp_path: Path) -> None:
    in_flight = InFlight(InFlightLimits(8, 4), GatewayMetrics(), write_latency_target_ms=0)
    for step in range(4):
        assert in_flight.try_enter("write", float(step))
    in_flight.leave("write", 10.0)
    assert in_flight.try_enter("write", 10.0)
    assert in_flight.write_limit == 4
    assert _config(tmp_path).gateway_settings.write_latency_target_ms == 250
    with pytest.raises(ConfigError, match="write_latency_target_ms=-1"):
        _config(tmp_path, write_latency_target_ms=-1)


async def test_an_overloaded_cluster_is_answered_as_try_later_not_as_a_missing_leader(
    shop: Shop,
) -> None:
    shop.create("p1", 100)
    await shop.synced()
    shop.cluster.fail_next.append(Overloaded("every node asked is overloaded"))
    status, body, headers = await shop.reserve("alice", "p1", key="k1")
    assert status == 503 and body["type"] == PROBLEM_BASE + "overloaded"
    assert int(headers["Retry-After"]) >= 1
    assert headers["Idempotency-Key"] == "k1"  # retry with it: nothing was applied
    status, _, _ = await shop.reserve("alice", "p1", key="k1")
    assert status == 200


# -- the event loop's lag ------------------------------------------------------------------


def test_the_loop_lag_is_how_late_a_timer_ran() -> None:
    assert loop_lag(due=10.0, now=10.25) == pytest.approx(0.25)
    assert loop_lag(due=10.0, now=10.0) == 0.0
    assert loop_lag(due=10.0, now=9.999) == 0.0  # libuv rounds: a timer may run early


@pytest.mark.parametrize(
    ("limit", "p90_s", "lag_s", "expected"),
    [
        (256, 0.05, 0.0, 256),  # fast writes, an idle loop: at the ceiling
        (256, 0.05, 0.2, 256),  # 50 + 200 ms: on the target, unchanged
        (256, 0.05, 0.45, 128),  # 50 + 450 ms: twice the target, halved
        (256, 0.05, 3.0, 128),  # at most halved per interval
        (100, 0.05, 0.15, 125),  # 50 + 150 ms, under the target: grows by at most 25 %
        (200, 0.10, 0.30, 125),  # 100 + 300 ms: x 250/400
        (40, 0.05, 1.0, MIN_WRITE_LIMIT),  # never below the floor
    ],
)
def test_the_write_cap_counts_the_loop_lag_with_the_handling_time(
    limit: float, p90_s: float, lag_s: float, expected: float
) -> None:
    durations = [p90_s] * 10
    got = next_write_limit(limit, durations, 0.25, stalled=False, ceiling=256, lag_s=lag_s)
    assert got == pytest.approx(expected)


def test_an_idle_or_stalled_interval_is_decided_as_without_lag() -> None:
    # No write answered and none in flight: there is no write to spare the machine.
    assert next_write_limit(128, [], 0.25, stalled=False, ceiling=256, lag_s=2.0) == 128
    assert next_write_limit(128, [], 0.25, stalled=True, ceiling=256, lag_s=2.0) == 64


@given(
    limit=st.floats(MIN_WRITE_LIMIT, 256),
    durations=st.lists(st.floats(0.0, 10.0), max_size=50),
    lags=st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 10.0)),
    stalled=st.booleans(),
)
def test_more_lag_never_admits_more_writes(
    limit: float, durations: list[float], lags: tuple[float, float], stalled: bool
) -> None:
    low, high = sorted(lags)
    at_low = next_write_limit(limit, durations, 0.25, stalled=stalled, ceiling=256, lag_s=low)
    at_high = next_write_limit(limit, durations, 0.25, stalled=stalled, ceiling=256, lag_s=high)
    assert MIN_WRITE_LIMIT <= at_high <= at_low <= 256
    # No lag: exactly the cap from the handling time alone.
    assert next_write_limit(
        limit, durations, 0.25, stalled=stalled, ceiling=256, lag_s=0.0
    ) == next_write_limit(limit, durations, 0.25, stalled=stalled, ceiling=256)


def test_the_worst_lag_of_an_interval_counts_a_tick_still_overdue() -> None:
    lag = LoopLag(0.025, GatewayMetrics())
    lag.due = 1.0
    assert lag.fired(1.1) == pytest.approx(0.1)
    lag.due = 1.125
    assert lag.fired(1.13) == pytest.approx(0.005)
    assert lag.worst_since(1.13) == pytest.approx(0.1)  # the worst, then starts over
    lag.due = 1.155
    assert lag.worst_since(1.16) == pytest.approx(0.005)
    # The next tick has not run 600 ms after it was due: the loop is that late now.
    assert lag.worst_since(1.755) == pytest.approx(0.6)


def test_a_starved_loop_lowers_the_write_cap_though_writes_are_handled_fast() -> None:
    metrics = GatewayMetrics()
    lag = LoopLag(0.025, metrics)
    in_flight = InFlight(InFlightLimits(1024, 256), metrics, write_latency_target_ms=250, lag=lag)
    now = 0.0
    assert in_flight.try_enter("read", now)  # opens the first interval
    lag.due = now + 0.025
    lag.fired(now + 0.525)  # the loop ran 500 ms late
    for _ in range(20):
        assert in_flight.try_enter("write", now)
        in_flight.leave("write", 0.01)  # each handled in 10 ms: the handlers saw nothing
    now += 0.6
    lag.due = now
    lag.fired(now)  # the next tick ran on time
    assert in_flight.try_enter("read", now)
    assert in_flight.write_limit == 128  # 10 + 500 ms over a 250 ms target: halved
    for _ in range(20):
        assert in_flight.try_enter("write", now)
        in_flight.leave("write", 0.01)
    now += 0.25
    lag.due = now  # and the one after it is due just now
    assert in_flight.try_enter("read", now)
    assert in_flight.write_limit == pytest.approx(160)  # the loop caught up: +25 %


async def test_the_timer_sees_a_blocked_loop() -> None:
    lag = LoopLag(0.01, GatewayMetrics())
    lag.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.1)  # the point: a callback that holds the loop
        await asyncio.sleep(0.03)
        assert lag.worst_since(time.perf_counter()) >= 0.08
    finally:
        lag.stop()
    assert lag.due is None


async def test_the_gateway_exposes_its_loop_lag(shop: Shop) -> None:
    await asyncio.sleep(0.1)  # a few ticks of the default 25 ms
    text = await (await shop.client.get("/metrics")).text()
    found = re.search(r"^flashsale_gateway_event_loop_lag_seconds_count (\S+)$", text, re.M)
    assert found and float(found.group(1)) >= 1
    assert 'flashsale_gateway_event_loop_lag_seconds_bucket{le="0.025"}' in text


def test_the_lag_tick_is_configurable_and_validated(tmp_path: Path) -> None:
    assert _config(tmp_path).gateway_settings.loop_lag_tick_ms == 25
    assert _config(tmp_path, loop_lag_tick_ms=0).gateway_settings.loop_lag_tick_ms == 0
    assert _config(tmp_path, loop_lag_tick_ms=1000).gateway_settings.loop_lag_tick_ms == 1000
    for bad in (4, 1001):
        with pytest.raises(ConfigError, match=f"gateway.loop_lag_tick_ms={bad}: expected 0"):
            _config(tmp_path, loop_lag_tick_ms=bad)
    with pytest.raises(ConfigError, match="loop_lag_tick_ms=-1"):
        _config(tmp_path, loop_lag_tick_ms=-1)


async def test_without_a_tick_there_is_no_lag_probe(tmp_path: Path) -> None:
    config = _config(tmp_path, loop_lag_tick_ms=0)
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(config, "g1", cluster=InProcessCluster(config)))
    )
    await client.start_server()
    try:
        text = await (await client.get("/metrics")).text()
        assert "flashsale_gateway_event_loop_lag_seconds" not in text
    finally:
        await client.close()
