"""The gateway's side of payments: the /payment body, its answers, webhooks, wiring.

Theory of operation: ``POST /payment`` (handler in gateway.api) validates its body here
(card numbers were already refused by gateway.bodies.read_json), then
``payments.service.PaymentService.pay`` reads the order from the leader (reads that
wait together share one request: gateway.order_reads), charges
through the configured providers and records the outcome through the gateway's batcher.
``POST /webhooks/{provider}`` verifies the provider's signature and settles the event
through the same service. Each gateway runs the reconciler of its own attempts as a
cleanup-context task. Errors become problems in gateway.problems, the one place that
maps them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway.bodies import MAX_PAYMENT_METHOD_LEN, PAYMENT_METHOD_PATTERN, parse_id
from gateway.order_reads import OrderReads
from gateway.problems import invalid_input
from gateway.shapes import money
from gateway.state import GatewayState
from payments.money import parse_amount
from payments.reconciler import Reconciler
from payments.service import PaymentAnswer, PaymentService, build_service
from payments.webhooks import (
    BadWebhook,
    WebhookNotice,
    paypal_notice,
    stripe_notice,
    verify_paypal,
    verify_stripe,
    webhook_secret,
)

PAYMENTS = web.AppKey("payments", PaymentService)
RECONCILER = web.AppKey("reconciler", Reconciler)
WEBHOOK_PROVIDERS = ("stripe", "paypal")
CHARGING_GRACE_MARGIN_MS = 1_000  # beyond two charge timeouts, a "charging" row is stale


@dataclass(frozen=True, slots=True)
class PaymentBody:
    """POST /payment."""

    order_id: str
    payment_method: str
    amount: Decimal


def parse_payment(body: Mapping[str, Any]) -> PaymentBody:
    """Validate ``{order_id, payment_method, amount}`` (amount: decimal string or number)."""
    unknown = sorted(set(body) - {"order_id", "payment_method", "amount"})
    if unknown:
        raise invalid_input(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    missing = sorted({"order_id", "payment_method", "amount"} - set(body))
    if missing:
        raise invalid_input(f"missing field(s): {', '.join(missing)}", field=missing[0])
    order_id = body["order_id"]
    if not isinstance(order_id, str):
        raise invalid_input("order_id must be a string", field="order_id")
    method = body["payment_method"]
    if (
        not isinstance(method, str)
        or len(method) > MAX_PAYMENT_METHOD_LEN
        or PAYMENT_METHOD_PATTERN.fullmatch(method) is None
    ):
        raise invalid_input(
            "payment_method must be a payment method token from your payment provider "
            f"(pm_..., at most {MAX_PAYMENT_METHOD_LEN} characters)",
            field="payment_method",
        )
    try:
        amount = parse_amount(body["amount"])
    except ValueError as exc:
        raise invalid_input(str(exc), field="amount") from None
    return PaymentBody(parse_id(order_id, "order_id"), method, amount)


def payment_result(answer: PaymentAnswer) -> dict[str, Any]:
    """The body of a 200 (paid) or 202 (pending) answer to /payment."""
    out: dict[str, Any] = {
        "success": answer.payment_status == "completed",
        "order_id": answer.order_id,
        "transaction_id": answer.transaction_id,
        "payment_status": answer.payment_status,
        "order_status": answer.order_status,
        "provider": answer.provider,
        "amount": money(answer.amount_minor, answer.currency),
        "amount_minor": answer.amount_minor,
        "currency": answer.currency,
        "payment_attempts": answer.attempts,
    }
    if answer.last4 is not None:
        out["card_last4"] = answer.last4
    return out


def build_payments(state: GatewayState) -> PaymentService:
    """The payment service of this gateway, reading and writing through its cluster port."""

    async def leader_get(path: str) -> Mapping[str, Any]:
        async with asyncio.timeout(state.request_deadline_s):
            return await state.cluster.get(path, leader_only=True)

    reads = OrderReads(leader_get)

    async def read_order(order_id: str) -> Mapping[str, Any] | None:
        async with asyncio.timeout(state.request_deadline_s):
            return await reads.read(order_id)

    async def record(command: dict[str, Any]) -> Mapping[str, Any]:
        _, result = await state.batcher.submit(command, timeout_s=state.request_deadline_s)
        return result

    return build_service(state.config, state.gateway_id, read_order, record)


async def payments_context(app: web.Application) -> AsyncIterator[None]:
    """Open the attempt store and run the reconciler while the gateway serves."""
    service = app[PAYMENTS]
    task: asyncio.Task[None] | None = None
    if service.router.providers:
        await service.store.open()
        task = asyncio.get_running_loop().create_task(app[RECONCILER].run(), name="reconciler")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await service.close()


def add_payments(app: web.Application, state: GatewayState) -> None:
    """Attach the payment service and its reconciler to the gateway application."""
    service = build_payments(state)
    p = state.config.payments
    app[PAYMENTS] = service
    app[RECONCILER] = Reconciler(
        service,
        period_ms=p.reconcile_period_ms,
        charging_grace_ms=2 * p.charge_timeout_ms + CHARGING_GRACE_MARGIN_MS,
    )
    app.cleanup_ctx.append(payments_context)


def webhook_notice(
    state: GatewayState, provider: str, body: bytes, headers: Mapping[str, str]
) -> WebhookNotice | None:
    """The verified event's settlement (None: nothing to settle); BadWebhook otherwise."""
    p = state.config.payments
    secret = webhook_secret(p, state.config.secret, provider)
    if provider == "stripe":
        return stripe_notice(verify_stripe(secret, body, headers))
    if provider == "paypal":
        return paypal_notice(verify_paypal(secret, p.paypal_webhook_id, body, headers))
    raise BadWebhook(f"no webhooks for provider {provider!r}")
