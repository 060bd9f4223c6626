"""Signed webhooks: signing (the sandbox), verifying and reading them (the gateway).

Theory of operation: a provider posts an event about a charge to
``POST /webhooks/{provider}`` on any gateway. The body is trusted only when its HMAC
signature verifies under the provider's webhook secret and its timestamp is within
``TOLERANCE_S``; then the event becomes a ``WebhookNotice`` (order, attempt, outcome,
transaction, amount) that the gateway settles through the ledger exactly like the
reconciler would.

- Stripe's scheme: header ``Stripe-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of
  "<t>.<body>">``, verified with the official package (``stripe.WebhookSignature``).
- PayPal-style: headers ``PayPal-Transmission-Id``, ``-Time`` (unix s) and ``-Sig``,
  the base64 HMAC-SHA256 of ``"<id>|<time>|<webhook id>|<crc32 of body>"``. PayPal itself
  signs that same string with a certificate; against real PayPal use its
  verify-webhook-signature API instead (see docs/PAYMENTS.md).

A secret left empty in the config is derived from the cluster secret, so the gateways
and the sandbox agree on it without another secret to distribute. Pure apart from the
default clocks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe

from cluster.auth import derive_key
from cluster.config import PaymentsConfig
from payments.keys import parse_attempt_key
from payments.money import to_minor
from payments.provider import ChargeStatus

TOLERANCE_S = 300  # a webhook older (or newer) than this is refused: no replays
MAX_WEBHOOK_BYTES = 64 * 1024
STRIPE_SIGNATURE = "Stripe-Signature"
PAYPAL_ID = "PayPal-Transmission-Id"
PAYPAL_TIME = "PayPal-Transmission-Time"
PAYPAL_SIG = "PayPal-Transmission-Sig"


class BadWebhook(ValueError):
    """The webhook is unsigned, forged, stale or not an event we understand."""


@dataclass(frozen=True, slots=True)
class WebhookNotice:
    provider: str
    order_id: str
    attempt_no: int
    attempt_key: str
    outcome: ChargeStatus  # SUCCEEDED or DECLINED
    transaction_id: str
    amount_minor: int
    currency: str


def webhook_secret(config: PaymentsConfig, cluster_secret: str, provider: str) -> str:
    """The signing secret of ``provider``'s webhooks (configured, or derived)."""
    configured = (
        config.stripe_webhook_secret if provider == "stripe" else config.paypal_webhook_secret
    )
    if configured is not None:
        return configured.reveal()
    derived = derive_key(cluster_secret, f"flashsale/payments-webhook/{provider}/v1".encode())
    return "whsec_" + derived.hex()


def _now_s() -> int:
    return int(time.time())


# -- signing (the sandbox) ------------------------------------------------------------


def stripe_signature(secret: str, body: bytes, at_s: int | None = None) -> str:
    t = _now_s() if at_s is None else at_s
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _paypal_mac(secret: str, transmission_id: str, at_s: str, webhook_id: str, body: bytes) -> str:
    signed = f"{transmission_id}|{at_s}|{webhook_id}|{zlib.crc32(body)}".encode()
    return base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


def paypal_headers(
    secret: str, webhook_id: str, transmission_id: str, body: bytes, at_s: int | None = None
) -> dict[str, str]:
    t = str(_now_s() if at_s is None else at_s)
    return {
        PAYPAL_ID: transmission_id,
        PAYPAL_TIME: t,
        PAYPAL_SIG: _paypal_mac(secret, transmission_id, t, webhook_id, body),
    }


# -- verifying and reading (the gateway) ----------------------------------------------


def verify_stripe(secret: str, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The event of a correctly signed Stripe webhook; BadWebhook otherwise."""
    header = headers.get(STRIPE_SIGNATURE)
    if not header:
        raise BadWebhook(f"missing {STRIPE_SIGNATURE}")
    try:
        stripe.WebhookSignature.verify_header(
            body.decode("utf-8"), header, secret, tolerance=TOLERANCE_S
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError):
        raise BadWebhook("bad or stale Stripe signature") from None
    return _json(body)


def verify_paypal(
    secret: str, webhook_id: str, body: bytes, headers: Mapping[str, str],
    *, now_s: int | None = None,
) -> dict[str, Any]:
    """The event of a correctly signed PayPal-style webhook; BadWebhook otherwise."""
    tid, at, sig = headers.get(PAYPAL_ID), headers.get(PAYPAL_TIME), headers.get(PAYPAL_SIG)
    if not tid or not at or not sig:
        raise BadWebhook("missing PayPal transmission headers")
    expected = _paypal_mac(secret, tid, at, webhook_id, body)
    if not hmac.compare_digest(expected, sig):
        raise BadWebhook("bad PayPal signature")
    now = _now_s() if now_s is None else now_s
    if not at.isdigit() or abs(now - int(at)) > TOLERANCE_S:
        raise BadWebhook("stale PayPal transmission")
    return _json(body)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise BadWebhook("the webhook body is not JSON") from None
    if not isinstance(value, dict):
        raise BadWebhook("the webhook body is not a JSON object")
    return value


def _attempt(key: object) -> tuple[str, int, str]:
    parsed = parse_attempt_key(key) if isinstance(key, str) else None
    if parsed is None or not isinstance(key, str):
        raise BadWebhook("the event names no flashsale payment attempt")
    return parsed[0], parsed[1], key


def stripe_notice(event: Mapping[str, Any]) -> WebhookNotice | None:
    """The settlement a Stripe event tells of; None for events that settle nothing."""
    kind = event.get("type")
    outcomes = {
        "payment_intent.succeeded": ChargeStatus.SUCCEEDED,
        "payment_intent.payment_failed": ChargeStatus.DECLINED,
    }
    if kind not in outcomes:
        return None
    intent = (event.get("data") or {}).get("object") or {}
    metadata = intent.get("metadata") or {}
    order_id, n, key = _attempt(metadata.get("attempt_key"))
    amount, currency = intent.get("amount"), intent.get("currency")
    if not isinstance(amount, int) or not isinstance(currency, str):
        raise BadWebhook("the payment intent has no amount")
    return WebhookNotice(
        "stripe", order_id, n, key, outcomes[kind], str(intent.get("id") or ""),
        amount, currency.upper(),
    )


def paypal_notice(event: Mapping[str, Any]) -> WebhookNotice | None:
    """The settlement a PayPal capture event tells of; None for other events."""
    kind = event.get("event_type")
    outcomes = {
        "PAYMENT.CAPTURE.COMPLETED": ChargeStatus.SUCCEEDED,
        "PAYMENT.CAPTURE.DENIED": ChargeStatus.DECLINED,
    }
    if kind not in outcomes:
        return None
    capture = event.get("resource") or {}
    order_id, n, key = _attempt(capture.get("custom_id"))
    amount = capture.get("amount") or {}
    currency = amount.get("currency_code")
    try:
        minor = to_minor(Decimal(str(amount.get("value"))), str(currency))
    except (InvalidOperation, ValueError):
        raise BadWebhook("the capture has no valid amount") from None
    if not isinstance(currency, str):
        raise BadWebhook("the capture has no currency")
    return WebhookNotice(
        "paypal", order_id, n, key, outcomes[kind], str(capture.get("id") or ""), minor, currency
    )
