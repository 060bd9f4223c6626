"""Stripe, through the official ``stripe`` package: one PaymentIntent per attempt.

Theory of operation: ``charge`` creates and confirms a PaymentIntent in one call with the
attempt's idempotency key (``order:<id>:attempt:<n>``), so a retry with the same key
returns the first answer and never charges twice; the key and the order id travel in
the intent's metadata too, so ``status`` can find an intent whose answer was lost
(search by metadata). The package's async API runs over aiohttp (``AIOHTTPClient`` with
a session of ours), so hundreds of charges wait concurrently on one event loop without a
thread each; every call is bounded by ``asyncio.timeout``. The package's own network
retries are off: the router decides what a failure means.

Error mapping: a card error is a decline; a refused connection, 503 and 429 mean Stripe
did nothing (``ProviderUnavailable``); a timeout, a dropped connection or another 5xx
leave the outcome unknown (pending).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import stripe

from payments.provider import (
    ChargeOutcome,
    ChargeRef,
    ChargeRequest,
    ChargeStatus,
    ProviderUnavailable,
    RefundFailed,
    RefundOutcome,
)

log = logging.getLogger("payments.stripe")
# The package logs two INFO lines per API call (request, response); at hundreds of
# charges per second that was most of a gateway's log volume and several per cent of its
# CPU. Our own lines say what matters (failures, unknown outcomes).
logging.getLogger("stripe").setLevel(logging.WARNING)

NAME = "stripe"
MAX_CONNECTIONS = 1000  # concurrent requests to Stripe from one gateway
PAYMENT_INTENTS = "/v1/payment_intents"
_UNAVAILABLE_STATUSES = (429, 503)


def _get(obj: Any, key: str) -> Any:
    """A field of a StripeObject or a plain dict (None when absent)."""
    try:
        return obj[key]
    except (KeyError, TypeError):
        return None


def _last4(intent: Any) -> str | None:
    charge = _get(intent, "latest_charge")
    details = _get(_get(charge, "payment_method_details"), "card")
    last4 = _get(details, "last4")
    return last4 if isinstance(last4, str) else None


def outcome_of_intent(intent: Any) -> ChargeOutcome:
    """A PaymentIntent's status as a ChargeOutcome."""
    status = _get(intent, "status")
    txn = str(_get(intent, "id") or "")
    if status == "succeeded":
        return ChargeOutcome(ChargeStatus.SUCCEEDED, txn, _last4(intent))
    if status in ("requires_payment_method", "canceled"):
        error = _get(intent, "last_payment_error")
        code = _get(error, "decline_code") or _get(error, "code") or status
        return ChargeOutcome(ChargeStatus.DECLINED, txn, decline_code=str(code))
    if status == "requires_action":
        # Off-session charges cannot authenticate the shopper: a decline they may retry.
        return ChargeOutcome(ChargeStatus.DECLINED, txn, decline_code="authentication_required")
    return ChargeOutcome(ChargeStatus.PENDING, txn)  # processing, requires_capture, ...


def _connection_refused(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError)


class StripeProvider:
    """PaymentProvider over Stripe's PaymentIntents API."""

    name = NAME

    def __init__(self, api_base: str, api_key: str, *, timeout_s: float) -> None:
        self.api_base = api_base
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._api_key = api_key
        self._client: stripe.StripeClient | None = None

    def _stripe(self) -> stripe.StripeClient:
        if self._client is None:
            # Made on first use: the session must belong to the running loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
            )
            http = stripe.AIOHTTPClient(session=self._session, timeout=None)
            self._client = stripe.StripeClient(
                self._api_key,
                base_addresses={"api": self.api_base},
                http_client=http,
                max_network_retries=0,
            )
        return self._client

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        params: Any = {
            "amount": request.amount_minor,
            "currency": request.currency.lower(),
            "payment_method": request.payment_method_token,
            "confirm": True,
            "off_session": True,
            "expand": ["latest_charge"],
            "metadata": {
                "order_id": request.order_id,
                "attempt_key": request.idempotency_key,
            },
        }
        intent: Any
        try:
            async with asyncio.timeout(self.timeout_s):
                # The client's raw request: the same request, headers, idempotency key and
                # error mapping as payment_intents.create_async, but the answer stays the
                # decoded JSON instead of a tree of StripeObjects, whose construction was
                # about a quarter of the package's CPU per charge (docs/BENCHMARKS.md).
                answer = await self._stripe().raw_request_async(
                    "post", PAYMENT_INTENTS, **params, idempotency_key=request.idempotency_key
                )
                intent = answer.data
        except TimeoutError:
            return ChargeOutcome(ChargeStatus.PENDING)
        except stripe.CardError as exc:
            intent = _get(exc.error, "payment_intent") if exc.error is not None else None
            code = (exc.error.decline_code or exc.code) if exc.error is not None else exc.code
            return ChargeOutcome(
                ChargeStatus.DECLINED, str(_get(intent, "id") or ""), decline_code=str(code or "")
            )
        except stripe.IdempotencyError:
            # The key is known to Stripe: a charge may exist under it. Never fail over.
            return ChargeOutcome(ChargeStatus.PENDING)
        except stripe.InvalidRequestError as exc:
            if exc.code == "idempotency_error":
                return ChargeOutcome(ChargeStatus.PENDING)
            if exc.param == "payment_method":
                # An unknown or unusable token: the shopper's to fix, like a decline.
                return ChargeOutcome(ChargeStatus.DECLINED, decline_code="invalid_payment_method")
            raise ProviderUnavailable(f"stripe refused the request: {exc.code}") from None
        except stripe.AuthenticationError:
            raise ProviderUnavailable("stripe refused the API key") from None
        except stripe.APIConnectionError as exc:
            if _connection_refused(exc):
                raise ProviderUnavailable("stripe unreachable") from None
            return ChargeOutcome(ChargeStatus.PENDING)
        except stripe.StripeError as exc:
            if exc.http_status in _UNAVAILABLE_STATUSES:
                raise ProviderUnavailable(f"stripe answered {exc.http_status}") from None
            log.warning("stripe charge outcome unknown",
                        extra={"order_id": request.order_id, "http_status": exc.http_status})
            return ChargeOutcome(ChargeStatus.PENDING)
        return outcome_of_intent(intent)

    async def status(self, ref: ChargeRef) -> ChargeOutcome:
        client = self._stripe()
        try:
            async with asyncio.timeout(self.timeout_s):
                if ref.transaction_id:
                    intent = await client.v1.payment_intents.retrieve_async(
                        ref.transaction_id, {"expand": ["latest_charge"]}
                    )
                    return outcome_of_intent(intent)
                query = f"metadata['attempt_key']:'{ref.idempotency_key}'"
                found = await client.v1.payment_intents.search_async({"query": query})
        except (TimeoutError, stripe.StripeError):
            return ChargeOutcome(ChargeStatus.PENDING)
        intents = list(found.data)
        if not intents:
            return ChargeOutcome(ChargeStatus.NOT_FOUND)
        return outcome_of_intent(intents[0])

    async def refund(
        self, transaction_id: str, amount_minor: int, currency: str, idempotency_key: str
    ) -> RefundOutcome:
        options: Any = {"idempotency_key": idempotency_key}
        try:
            async with asyncio.timeout(self.timeout_s):
                refund = await self._stripe().v1.refunds.create_async(
                    {"payment_intent": transaction_id, "amount": amount_minor}, options
                )
        except (TimeoutError, stripe.StripeError) as exc:
            raise RefundFailed(f"stripe refund of {transaction_id}: {type(exc).__name__}") from None
        status = _get(refund, "status")
        return RefundOutcome(str(_get(refund, "id") or ""), status in ("succeeded", "pending"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None
        self._client = None
