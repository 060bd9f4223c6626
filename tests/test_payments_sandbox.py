"""The Stripe and PayPal providers against the sandbox over real HTTP, and the pieces
they rest on: idempotency keys, webhook signatures, amounts, the attempt store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from payments.attempts import MAX_GROUP, AttemptState, AttemptStore, attempt_id
from payments.keys import attempt_key, ledger_payment_key, parse_attempt_key
from payments.money import parse_amount, to_minor
from payments.paypal_provider import PayPalProvider
from payments.provider import (
    ChargeRef,
    ChargeRequest,
    ChargeStatus,
    PaymentProvider,
    ProviderUnavailable,
)
from payments.sandbox import SANDBOX, Sandbox, SandboxSettings, create_app
from payments.stripe_provider import StripeProvider
from payments.webhooks import (
    BadWebhook,
    paypal_headers,
    paypal_notice,
    stripe_notice,
    stripe_signature,
    verify_paypal,
    verify_stripe,
)
from tests.support.cluster import free_ports

PAYPAL_ID, PAYPAL_SECRET = "flashsale-sandbox", "flashsale-sandbox-secret"


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[str, Sandbox]]:
    app = create_app(SandboxSettings())
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), app[SANDBOX]
    finally:
        await server.close()


def _providers(base: str, timeout_s: float = 5.0) -> list[PaymentProvider]:
    return [
        StripeProvider(base, "sk_test_x", timeout_s=timeout_s),
        PayPalProvider(base, PAYPAL_ID, PAYPAL_SECRET, timeout_s=timeout_s),
    ]


def _request(order_id: str, token: str = "pm_card_visa", n: int = 1) -> ChargeRequest:
    return ChargeRequest(order_id, 1999, "USD", token, attempt_key(order_id, n))


async def test_both_providers_charge_once_per_key_and_find_the_charge_again(
    sandbox: tuple[str, Sandbox],
) -> None:
    base, sb = sandbox
    for provider in _providers(base):
        try:
            order_id = f"o-{provider.name}"
            first = await provider.charge(_request(order_id))
            again = await provider.charge(_request(order_id))
            assert first.status is ChargeStatus.SUCCEEDED and first.transaction_id
            assert again == first
            found = await provider.status(
                ChargeRef(order_id, attempt_key(order_id, 1), 1999, "USD")
            )
            assert found.status is ChargeStatus.SUCCEEDED
            assert found.transaction_id == first.transaction_id
            missing = await provider.status(
                ChargeRef(order_id, attempt_key(order_id, 9), 1999, "USD")
            )
            assert missing.status is ChargeStatus.NOT_FOUND
            refund = await provider.refund(first.transaction_id, 1999, "USD", "r1")
            assert refund.succeeded
            assert await provider.refund(first.transaction_id, 1999, "USD", "r1") == refund
        finally:
            await provider.close()
    assert sb.stats.charges_by_order == {"o-stripe": 1, "o-paypal": 1}
    assert sb.stats.refunds == 2


async def test_declines_and_bad_tokens_are_declines(sandbox: tuple[str, Sandbox]) -> None:
    base, sb = sandbox
    for provider in _providers(base):
        try:
            for token in ("pm_card_declined", "pm_card_insufficient_funds"):
                outcome = await provider.charge(_request(f"d-{provider.name}-{token}", token))
                assert outcome.status is ChargeStatus.DECLINED, (provider.name, outcome)
                assert outcome.decline_code
        finally:
            await provider.close()
    assert sb.stats.charges == 0 and sb.stats.declines == 4


async def test_the_decline_rate_is_seeded(sandbox: tuple[str, Sandbox]) -> None:
    base, sb = sandbox
    provider = StripeProvider(base, "sk_test_x", timeout_s=5)
    runs = []
    try:
        for seed in (7, 7):
            sb.configure({"decline_rate": 0.5, "seed": seed})
            runs.append([
                (await provider.charge(_request(f"r{seed}-{len(runs)}-{i}"))).status
                for i in range(12)
            ])
    finally:
        await provider.close()
    assert runs[0] == runs[1]
    assert ChargeStatus.DECLINED in runs[0] and ChargeStatus.SUCCEEDED in runs[0]


async def test_an_outage_or_a_dead_address_is_unavailable_and_charges_nothing(
    sandbox: tuple[str, Sandbox],
) -> None:
    base, sb = sandbox
    sb.configure({"outage": True})
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    for provider in [*_providers(base), *_providers(dead)]:
        try:
            with pytest.raises(ProviderUnavailable):
                await provider.charge(_request(f"u-{provider.name}"))
        finally:
            await provider.close()
    assert sb.stats.charges == 0 and sb.stats.outage_answers >= 2


async def test_a_withheld_answer_is_pending_not_a_failure(sandbox: tuple[str, Sandbox]) -> None:
    base, sb = sandbox
    sb.configure({"hang_after_charge": True})
    for provider in _providers(base, timeout_s=0.3):
        try:
            outcome = await provider.charge(_request(f"h-{provider.name}"))
            assert outcome.status is ChargeStatus.PENDING
        finally:
            await provider.close()
    sb.configure({"hang_after_charge": False})
    assert sb.stats.charges == 2


async def test_a_stripe_key_reused_with_other_parameters_is_refused(
    sandbox: tuple[str, Sandbox],
) -> None:
    base, sb = sandbox
    provider = StripeProvider(base, "sk_test_x", timeout_s=5)
    try:
        await provider.charge(_request("k1"))
        other = ChargeRequest("k1", 2999, "USD", "pm_card_visa", attempt_key("k1", 1))
        assert (await provider.charge(other)).status is ChargeStatus.PENDING
    finally:
        await provider.close()
    assert sb.stats.charges == 1


async def test_the_admin_api_flips_switches_and_counts(sandbox: tuple[str, Sandbox]) -> None:
    base, _ = sandbox
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/_sandbox/config", json={"outage": ["paypal"],
                                                             "latency_ms": 1}) as resp:
            assert resp.status == 200
            assert (await resp.json())["outage"] == ["paypal"]
        async with http.post(f"{base}/_sandbox/config", json={"outage": ["acme"]}) as resp:
            assert resp.status == 422
        async with http.get(f"{base}/_sandbox/stats") as resp:
            assert (await resp.json())["charges"] == 0
        async with http.get(f"{base}/metrics") as resp:
            assert "flashsale_sandbox_charges_total 0" in await resp.text()
        async with http.post(f"{base}/v1/payment_intents", data={"amount": "1"}) as resp:
            assert resp.status == 401, "the Stripe API needs a key"


# -- webhooks ------------------------------------------------------------------------------


def _stripe_event(key: str) -> bytes:
    return json.dumps({"type": "payment_intent.succeeded", "data": {"object": {
        "id": "pi_1", "amount": 1999, "currency": "usd", "metadata": {"attempt_key": key}}}}
    ).encode()


def test_stripe_webhooks_verify_only_with_the_right_secret_and_time() -> None:
    body = _stripe_event(attempt_key("o7", 2))
    good = {"Stripe-Signature": stripe_signature("whsec_a", body)}
    notice = stripe_notice(verify_stripe("whsec_a", body, good))
    assert notice is not None
    assert (notice.order_id, notice.attempt_no, notice.amount_minor, notice.currency) == (
        "o7", 2, 1999, "USD")
    with pytest.raises(BadWebhook):
        verify_stripe("whsec_b", body, good)
    with pytest.raises(BadWebhook):
        verify_stripe("whsec_a", body + b" ", good)
    stale = {"Stripe-Signature": stripe_signature("whsec_a", body, at_s=1)}
    with pytest.raises(BadWebhook):
        verify_stripe("whsec_a", body, stale)


def test_paypal_webhooks_verify_only_with_the_right_secret_and_time() -> None:
    body = json.dumps({"event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": {
        "id": "CAP1", "custom_id": attempt_key("o8", 1),
        "amount": {"currency_code": "JPY", "value": "1999"}}}).encode()
    headers = paypal_headers("s", "wh", "T1", body)
    notice = paypal_notice(verify_paypal("s", "wh", body, headers))
    assert notice is not None and notice.amount_minor == 1999 and notice.currency == "JPY"
    for secret, hook in (("t", "wh"), ("s", "other")):
        with pytest.raises(BadWebhook):
            verify_paypal(secret, hook, body, headers)
    with pytest.raises(BadWebhook):
        verify_paypal("s", "wh", body, paypal_headers("s", "wh", "T1", body, at_s=1))
    other = json.dumps({"event_type": "CHECKOUT.ORDER.APPROVED"}).encode()
    assert paypal_notice(verify_paypal("s", "wh", other, paypal_headers("s", "wh", "T", other)))\
        is None


# -- keys, amounts, the attempt store ------------------------------------------------------


def test_keys_round_trip_and_ledger_keys_cannot_collide_with_shopper_keys() -> None:
    for order_id in ("o1", "o:with:colons", "x" * 128):
        key = attempt_key(order_id, 3)
        assert parse_attempt_key(key) == (order_id, 3)
        ledger_key = ledger_payment_key(order_id, 3, "stripe")
        assert len(ledger_key) <= 128 and ledger_key.startswith("~")
    assert parse_attempt_key("order:o1:attempt:0") is None
    assert parse_attempt_key("something else") is None
    with pytest.raises(ValueError):
        attempt_key("o1", 0)


@pytest.mark.parametrize(("value", "currency", "minor"), [
    ("19.99", "USD", 1999), (19.99, "USD", 1999), ("19.990", "USD", 1999), (20, "USD", 2000),
    ("1999", "JPY", 1999), ("1.234", "KWD", 1234), (19.999, "USD", None), ("1.5", "JPY", None),
])
def test_amounts_convert_exactly_or_not_at_all(
    value: object, currency: str, minor: int | None
) -> None:
    amount = parse_amount(value)
    if minor is None:
        with pytest.raises(ValueError):
            to_minor(amount, currency)
    else:
        assert to_minor(amount, currency) == minor


@pytest.mark.parametrize("bad", ["", "NaN", "Infinity", "-1", "1e400000", True, None, [],
                                 "1" * 40])
def test_bad_amounts_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        to_minor(parse_amount(bad), "USD")


async def test_attempts_survive_a_restart_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "payments.db"
    store = AttemptStore(path)
    key = attempt_key("o1", 1)
    await store.begin(order_id="o1", user_id="alice", attempt_no=1, provider="stripe",
                      idempotency_key=key, amount_minor=1999, currency="USD", now_ms=10)
    await store.update(attempt_id(key, "stripe"), AttemptState.UNKNOWN, 20)
    await store.close()
    again = AttemptStore(path)
    try:
        rows = await again.open_attempts(charging_before_ms=0)
        assert [(r.order_id, r.state) for r in rows] == [("o1", AttemptState.UNKNOWN)]
        # A second begin of an attempt whose outcome is unknown leaves it unknown.
        await again.begin(order_id="o1", user_id="alice", attempt_no=1, provider="stripe",
                          idempotency_key=key, amount_minor=1999, currency="USD", now_ms=30)
        got = await again.get(attempt_id(key, "stripe"))
        assert got is not None and got.state is AttemptState.UNKNOWN
        await again.update(attempt_id(key, "stripe"), AttemptState.RECORDED, 40)
        assert await again.open_attempts(charging_before_ms=10**15) == []
        assert await again.prune(10**15) == 1
    finally:
        await again.close()


async def test_concurrent_attempt_writes_are_grouped_and_a_failing_one_fails_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "payments.db"
    store = AttemptStore(path)
    count = MAX_GROUP + 200  # more than one group

    async def begin(n: int) -> None:
        await store.begin(order_id=f"o{n}", user_id="alice", attempt_no=1, provider="stripe",
                          idempotency_key=attempt_key(f"o{n}", 1), amount_minor=100,
                          currency="USD", now_ms=n)

    async def broken() -> None:
        await store._run(lambda db: db.execute("UPDATE no_such_table SET x = 1"))

    calls = [begin(n) for n in range(count)]
    calls.insert(count // 2, broken())
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], sqlite3.OperationalError)
    await store.close()
    again = AttemptStore(path)
    try:
        rows = await again.open_attempts(charging_before_ms=10**15, limit=10 * count)
        assert len(rows) == count  # every other write was committed
    finally:
        await again.close()


def test_the_sandbox_amount_parser_matches_decimal() -> None:
    assert parse_amount("0019.90") == Decimal("19.90")
