"""The token bucket (bots.buckets), exhaustively: never more than the burst, refills at
the rate, and retry_after is exactly the wait that suffices; the in-process limiter
stays bounded; the Lua copy in Redis agrees with the Python one."""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from bots.buckets import Bucket, Limit, take, take_all
from bots.local_limiter import LocalLimiter
from bots.redis_limiter import RedisLimiter

rates = st.floats(min_value=0.01, max_value=1000, allow_nan=False, allow_infinity=False)
bursts = st.integers(min_value=1, max_value=1000)
gaps = st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False)
# A clock that mostly moves forward, sometimes back a little (a step of the wall clock).
steps = st.lists(st.floats(min_value=-1, max_value=5, allow_nan=False), min_size=1, max_size=60)


@given(rates, bursts, steps)
def test_a_bucket_never_holds_more_than_its_burst_nor_less_than_nothing(
    rate: float, burst: int, moves: list[float]
) -> None:
    state: Bucket | None = None
    now = 1000.0
    for move in moves:
        now += move
        state, _, wait = take(state, now, rate, burst)
        assert 0 <= state.tokens <= burst
        assert wait >= 0


@given(rates, bursts, gaps)
def test_a_new_client_has_a_full_burst_then_is_refused(rate: float, burst: int, at: float) -> None:
    state: Bucket | None = None
    for _ in range(burst):
        state, allowed, wait = take(state, at, rate, burst)
        assert allowed and wait == 0
    state, allowed, wait = take(state, at, rate, burst)
    assert not allowed
    assert math.isclose(wait, 1 / rate, rel_tol=1e-9)


@given(rates, bursts, st.floats(min_value=0, max_value=1000, allow_nan=False))
def test_tokens_refill_at_the_rate_up_to_the_burst(rate: float, burst: int, gap: float) -> None:
    empty = Bucket(0.0, 50.0)
    state, _, _ = take(empty, 50.0 + gap, rate, burst, cost=1)
    expected = min(burst, gap * rate)
    # state holds what refilled minus the token just taken (when there was one).
    held = state.tokens + (1 if expected + 1e-9 >= 1 else 0)
    assert math.isclose(held, expected, rel_tol=1e-9, abs_tol=1e-9)


@given(rates, bursts, st.floats(min_value=0, max_value=0.999), st.data())
def test_retry_after_is_exactly_the_wait_that_suffices(
    rate: float, burst: int, fraction: float, data: st.DataObject
) -> None:
    cost = data.draw(st.integers(min_value=1, max_value=burst))
    state = Bucket(fraction * cost, 10.0)  # fewer tokens than the cost
    refused, allowed, wait = take(state, 10.0, rate, burst, cost)
    assert not allowed and wait > 0
    assert refused == state  # a refusal takes nothing
    # Waiting the whole retry_after is enough ...
    _, allowed, _ = take(refused, 10.0 + wait, rate, burst, cost)
    assert allowed
    # ... and waiting noticeably less (a millionth of a token short) is not.
    short = wait - 1e-6 / rate
    if short > 0:
        _, allowed, again = take(refused, 10.0 + short, rate, burst, cost)
        assert not allowed and math.isclose(again, wait - short, rel_tol=1e-6, abs_tol=1e-9)


@given(rates, bursts)
def test_a_clock_going_back_refills_nothing_and_still_says_how_long(
    rate: float, burst: int
) -> None:
    state = Bucket(0.0, 100.0)
    later, allowed, wait = take(state, 90.0, rate, burst)  # 10 s in the past
    assert not allowed and later.tokens == 0.0 and later.updated_at == 100.0
    assert math.isclose(wait, 10.0 + 1 / rate, rel_tol=1e-9)
    _, allowed, _ = take(later, 90.0 + wait, rate, burst)
    assert allowed


@given(rates, bursts, st.integers(min_value=0, max_value=3000))
def test_over_any_window_at_most_burst_plus_rate_times_window_pass(
    rate: float, burst: int, n: int
) -> None:
    # n requests evenly over 10 s: passed <= burst + 10 * rate.
    state: Bucket | None = None
    passed = 0
    for i in range(n):
        state, allowed, _ = take(state, 10.0 * i / max(n, 1), rate, burst)
        passed += allowed
    assert passed <= burst + 10 * rate + 1e-6


def test_bad_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        take(None, 0.0, 0.0, 1)
    with pytest.raises(ValueError):
        take(None, 0.0, 1.0, 0)
    with pytest.raises(ValueError):
        take(None, 0.0, 1.0, 2, cost=3)


@given(st.lists(st.tuples(st.sampled_from("abc"), bursts, rates), min_size=1, max_size=3))
def test_several_buckets_are_paid_all_or_none(specs: list[tuple[str, int, float]]) -> None:
    limits = [Limit(kind, kind, rate, burst) for kind, burst, rate in specs]
    states: list[Bucket | None] = [Bucket(0.0, 0.0)] + [None] * (len(limits) - 1)
    after, verdict = take_all(states, limits, 0.0)
    assert not verdict.allowed and verdict.kind == limits[0].kind
    assert after[0].tokens == 0.0
    assert all(s.tokens == lim.burst for s, lim in zip(after[1:], limits[1:], strict=True))


def test_the_local_limiter_keeps_at_most_max_clients_and_forgets_the_idlest() -> None:
    limiter = LocalLimiter(max_clients=3)
    for ip in ("a", "b", "c"):
        assert limiter.take([Limit("ip", ip, 1.0, 1)], 0.0).allowed
    assert not limiter.take([Limit("ip", "a", 1.0, 1)], 0.0).allowed  # a is used again
    assert limiter.take([Limit("ip", "d", 1.0, 1)], 0.0).allowed  # evicts b, the idlest
    assert len(limiter) == 3
    assert not limiter.take([Limit("ip", "a", 1.0, 1)], 0.0).allowed  # a was kept
    assert limiter.take([Limit("ip", "b", 1.0, 1)], 0.0).allowed  # b starts over (full)


# -- the Lua script in the real Redis ------------------------------------------------


@pytest.fixture
async def redis() -> AsyncIterator[tuple[Redis, str]]:
    client = Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"test:buckets:{secrets.token_hex(6)}:"
    try:
        yield client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_the_lua_bucket_gives_a_burst_then_a_wait_like_the_python_one(
    redis: tuple[Redis, str],
) -> None:
    client, prefix = redis
    limiter = RedisLimiter(client, prefix)
    limit = Limit("ip", "198.51.100.7", 2.0, 3)
    verdicts = [await limiter.take([limit]) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[-1].kind == "ip"
    # Refill at 2/s: the wait is at most half a second (minus the time the calls took).
    assert 0.3 < verdicts[-1].retry_after_s <= 0.5
    ttl = await client.pttl(limiter.key(limit))
    assert 0 < ttl <= 1500 + 1000  # full again after burst/rate = 1.5 s, plus the margin


async def test_the_lua_script_takes_from_every_bucket_or_none(redis: tuple[Redis, str]) -> None:
    client, prefix = redis
    limiter = RedisLimiter(client, prefix)
    ip = Limit("ip", "203.0.113.1", 0.01, 5)
    shopper = Limit("shopper", "alice", 0.01, 1)
    assert (await limiter.take([ip, shopper])).allowed
    refused = await limiter.take([ip, shopper])
    assert not refused.allowed and refused.kind == "shopper"
    assert 99 < refused.retry_after_s <= 100
    tokens = float(await client.hget(limiter.key(ip), "tokens") or "nan")
    assert math.isclose(tokens, 4.0, abs_tol=0.01)  # the refused request took nothing


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=12), bursts)
def test_lua_and_python_agree_on_which_requests_pass(costs: list[int], burst: int) -> None:
    """Without refill (a tiny rate), the same costs pass or fail alike in both."""
    import asyncio

    async def run() -> list[bool]:
        client = Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
        prefix = f"test:buckets:{secrets.token_hex(6)}:"
        try:
            limiter = RedisLimiter(client, prefix)
            out = []
            for cost in costs:
                lim = Limit("ip", "x", 1e-6, burst, min(cost, burst))
                out.append((await limiter.take([lim])).allowed)
            return out
        finally:
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    in_redis = asyncio.run(run())
    state: Bucket | None = None
    local = []
    for cost in costs:
        state, allowed, _ = take(state, 0.0, 1e-6, burst, min(cost, burst))
        local.append(allowed)
    assert in_redis == local
