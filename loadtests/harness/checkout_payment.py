"""Checkout + payment: one shopper's two writes after add-to-cart, timed together.

wrk cannot chain requests (the payment needs the order id the checkout answered), so
this load runs in the harness process: aiohttp on uvloop, one connection per client. It
is far from being the limit here: each pair costs the gateway two Raft commits and a
provider call, hundreds per second, where the client spends well under a millisecond.

``prepare_carts`` places the holds first (``POST /add-to-cart``, untimed); then each of
``concurrency`` clients takes the next cart, ``POST /checkout`` then ``POST /payment``
(pm_card_visa, the order's amount), back to back; pairs finished inside the window count.
A 503 (the gateway shedding load, or no leader) is retried with the same
Idempotency-Key after its Retry-After, up to ``MAX_TRIES`` times, as a real client does;
the retries are counted, and their waits are in the pair's latency. Each pair's two
writes are also timed apart (``checkout`` and ``payment`` percentiles): the checkout's
latency target is the gateway's and the cluster's, the payment's includes the provider.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.identity import issue_token
from loadtests.harness.stats import percentile

PAYMENT_METHOD = "pm_card_visa"
ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "US"}  # fmt: skip
TIMEOUT_S = 30.0
TOKEN_TTL_S = 3600
MAX_TRIES = 5  # of one write answered 503
MAX_RETRY_WAIT_S = 2.0  # cap on a Retry-After honoured between tries


@dataclass(frozen=True)
class Cart:
    base: str
    user: str
    token: str
    cart_id: str


@dataclass
class PairStep:
    concurrency: int
    seconds: float
    pairs: int = 0
    per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    # (p50, p95, p99) in ms of the checkout alone and of the payment alone, same pairs
    checkout_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    payment_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    paid_total: int = 0  # every paid pair, inside the window or not
    errors: dict[str, int] = field(default_factory=dict)
    retried_503: int = 0  # tries answered 503 and retried after Retry-After
    carts_ran_out: bool = False


def _label(path: str, status: int, raw: bytes) -> str:
    try:
        kind = str(json.loads(raw).get("type", "")).rsplit("/", 1)[-1]
    except (ValueError, AttributeError):
        kind = "not-json"
    return f"{path} {status} {kind}".strip()


def _retry_after(value: str | None) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(value or 1)))
    except ValueError:
        return 1.0


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], token: str,
                key: str, step: PairStep | None = None) -> tuple[int, bytes]:  # fmt: skip
    """POST with one Idempotency-Key for every try; 503 retried after its Retry-After."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    for attempt in range(1, MAX_TRIES + 1):
        try:
            async with http.post(url, json=body, headers=headers) as resp:
                status, raw, wait = resp.status, await resp.read(), resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, type(exc).__name__.encode()
        if status != 503 or attempt == MAX_TRIES:
            return status, raw
        if step is not None:
            step.retried_503 += 1
        await asyncio.sleep(_retry_after(wait))
    raise AssertionError("unreachable")


async def prepare_carts(
    bases: Sequence[str], secret: str, product: str, users: Sequence[str], concurrency: int
) -> tuple[list[Cart], dict[str, int]]:
    """One hold of one unit per user (``add-to-cart``), spread over the gateways."""
    carts: list[Cart] = []
    errors: dict[str, int] = {}
    todo = iter(enumerate(users))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as http:

        async def worker() -> None:
            for n, user in todo:
                base = bases[n % len(bases)]
                token = issue_token(secret, user, TOKEN_TTL_S)
                body = {"user_id": user, "product_id": product, "quantity": 1}
                status, raw = await _post(http, base + "/add-to-cart", body, token, "hold")
                if status == 200:
                    carts.append(Cart(base, user, token, json.loads(raw)["cart_id"]))
                else:
                    label = _label("/add-to-cart", status, raw)
                    errors[label] = errors.get(label, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return carts, errors


async def run_pairs(
    carts: list[Cart], concurrency: int, warmup_s: float, seconds: float
) -> PairStep:
    """Check out and pay ``carts`` with ``concurrency`` clients; count the window."""
    step = PairStep(concurrency, seconds)
    latencies: list[float] = []
    checkouts: list[float] = []
    payments: list[float] = []
    todo = iter(carts)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency + 4)
    ) as http:
        measure_from = time.monotonic() + warmup_s
        until = measure_from + seconds

        def fail(label: str) -> None:
            if measure_from <= time.monotonic() < until:
                step.errors[label] = step.errors.get(label, 0) + 1

        async def client() -> None:
            for cart in todo:
                if time.monotonic() >= until:
                    return
                started = time.perf_counter()
                body: dict[str, Any] = {"user_id": cart.user, "cart_id": cart.cart_id,
                                        "payment_method": PAYMENT_METHOD,
                                        "shipping_address": ADDRESS}  # fmt: skip
                status, raw = await _post(http, cart.base + "/checkout", body, cart.token, "co",
                                          step)  # fmt: skip
                if status != 200:
                    fail(_label("/checkout", status, raw))
                    continue
                order = json.loads(raw)
                body = {"order_id": order["order_id"], "payment_method": PAYMENT_METHOD,
                        "amount": order["amount"]}  # fmt: skip
                checked_out = time.perf_counter()
                status, raw = await _post(http, cart.base + "/payment", body, cart.token, "pay",
                                          step)  # fmt: skip
                if status != 200:
                    fail(_label("/payment", status, raw))
                    continue
                step.paid_total += 1
                if measure_from <= time.monotonic() < until:
                    done = time.perf_counter()
                    latencies.append(done - started)
                    checkouts.append(checked_out - started)
                    payments.append(done - checked_out)
            step.carts_ran_out = True

        await asyncio.gather(*(client() for _ in range(concurrency)))
    ordered = sorted(latencies)
    step.pairs = len(ordered)
    step.per_s = len(ordered) / seconds
    step.p50_ms = percentile(ordered, 0.50) * 1000
    step.p95_ms = percentile(ordered, 0.95) * 1000
    step.p99_ms = percentile(ordered, 0.99) * 1000
    step.checkout_ms = _percentiles_ms(checkouts)
    step.payment_ms = _percentiles_ms(payments)
    return step


def _percentiles_ms(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (percentile(ordered, 0.50) * 1000, percentile(ordered, 0.95) * 1000,
            percentile(ordered, 0.99) * 1000)  # fmt: skip
