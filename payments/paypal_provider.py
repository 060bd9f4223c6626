"""PayPal-style payments over aiohttp: create an order, then capture it.

Theory of operation: a charge is two calls. ``POST /v2/checkout/orders`` creates an order
for the amount with the shopper's vaulted payment token (moves no money), then
``POST /v2/checkout/orders/{id}/capture`` captures it (moves the money). Each call carries
a ``PayPal-Request-Id`` derived from the attempt's idempotency key, so a retry returns
the first answer. ``status`` replays the create with the same request id, which answers
the existing order in its current state (``COMPLETED`` once captured); when the create
never arrived, the replay makes a new order that nothing ever captures. The transaction
id is the capture's id (what a refund names). Calls authenticate with an OAuth2 client
credentials token, cached until shortly before it expires.

Error mapping: a 422 ``INSTRUMENT_DECLINED`` (or a capture ``DECLINED``) is a decline; a
refused connection, 503 or 429 on either call means nothing was captured
(``ProviderUnavailable``); a timeout or another failure of the capture is unknown.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from payments.money import from_minor
from payments.provider import (
    ChargeOutcome,
    ChargeRef,
    ChargeRequest,
    ChargeStatus,
    ProviderUnavailable,
    RefundFailed,
    RefundOutcome,
)

NAME = "paypal"
MAX_CONNECTIONS = 1000  # concurrent requests to PayPal from one gateway
MAX_REQUEST_ID_LEN = 108  # PayPal's limit on PayPal-Request-Id
MAX_CUSTOM_ID_LEN = 127  # PayPal's limit on custom_id / invoice_id
TOKEN_EARLY_REFRESH_S = 60  # renew the OAuth token this long before it expires
_UNAVAILABLE_STATUSES = (429, 503)
_DECLINE_ISSUES = {"INSTRUMENT_DECLINED", "PAYER_ACTION_REQUIRED", "PAYMENT_DENIED"}


def request_id(idempotency_key: str, step: str) -> str:
    """A PayPal-Request-Id for one step of an attempt (short enough for PayPal)."""
    plain = f"{idempotency_key}:{step}"
    if len(plain) <= MAX_REQUEST_ID_LEN:
        return plain
    return f"fs-{hashlib.sha256(plain.encode()).hexdigest()[:64]}:{step}"


class _Unknown(Exception):
    """The call may have been processed; its answer is lost."""


def _capture(order: Mapping[str, Any]) -> Mapping[str, Any] | None:
    units = order.get("purchase_units") or []
    for unit in units if isinstance(units, list) else []:
        captures = ((unit or {}).get("payments") or {}).get("captures") or []
        if isinstance(captures, list) and captures:
            first = captures[0]
            return first if isinstance(first, Mapping) else None
    return None


def outcome_of_order(order: Mapping[str, Any]) -> ChargeOutcome:
    """A PayPal order (after a capture or a lookup) as a ChargeOutcome."""
    capture = _capture(order)
    if capture is not None:
        status = capture.get("status")
        cid = str(capture.get("id") or "")
        if status in ("COMPLETED", "PENDING"):
            # A PENDING capture is money PayPal holds for us: settled as paid.
            return ChargeOutcome(ChargeStatus.SUCCEEDED, cid)
        if status in ("DECLINED", "FAILED"):
            return ChargeOutcome(ChargeStatus.DECLINED, cid, decline_code=str(status).lower())
    if order.get("status") in ("CREATED", "APPROVED", "SAVED", "PAYER_ACTION_REQUIRED"):
        return ChargeOutcome(ChargeStatus.NOT_FOUND, str(order.get("id") or ""))
    return ChargeOutcome(ChargeStatus.PENDING, str(order.get("id") or ""))


class PayPalProvider:
    """PaymentProvider over PayPal's Orders v2 REST API."""

    name = NAME

    def __init__(
        self, api_base: str, client_id: str, client_secret: str, *, timeout_s: float
    ) -> None:
        self.api_base = api_base
        self.timeout_s = timeout_s
        self._client_id = client_id
        self._client_secret = client_secret
        self._session: aiohttp.ClientSession | None = None
        self._token = ""
        self._token_expires_at = 0.0
        self._token_lock: asyncio.Lock | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
            )
        return self._session

    async def _access_token(self) -> str:
        if self._token and time.monotonic() < self._token_expires_at:
            return self._token
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            if self._token and time.monotonic() < self._token_expires_at:
                return self._token
            basic = base64.b64encode(f"{self._client_id}:{self._client_secret}".encode()).decode()
            try:
                status, body = await self._call(
                    "POST",
                    "/v1/oauth2/token",
                    data={"grant_type": "client_credentials"},
                    headers={"Authorization": f"Basic {basic}"},
                )
            except _Unknown as exc:  # a token request moves no money
                raise ProviderUnavailable(f"paypal token request failed: {exc}") from None
            token = body.get("access_token")
            if status != 200 or not isinstance(token, str):
                raise ProviderUnavailable(f"paypal token request answered {status}")
            expires_in = body.get("expires_in")
            ttl = float(expires_in) if isinstance(expires_in, int | float) else 300.0
            self._token = token
            self._token_expires_at = time.monotonic() + max(1.0, ttl - TOKEN_EARLY_REFRESH_S)
            return token

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One request; ProviderUnavailable when it certainly was not processed, _Unknown
        when it may have been."""
        try:
            async with self._http().request(
                method,
                self.api_base + path,
                json=json_body,
                data=data,
                headers=headers,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError:
            raise ProviderUnavailable("paypal unreachable") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Unknown(type(exc).__name__) from None
        if status in _UNAVAILABLE_STATUSES:
            raise ProviderUnavailable(f"paypal answered {status}")
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {}
        return status, decoded if isinstance(decoded, dict) else {}

    async def _authorized(self, request_key: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {await self._access_token()}",
            "PayPal-Request-Id": request_key,
            "Prefer": "return=representation",
        }

    def _order_body(
        self, order_id: str, key: str, amount_minor: int, currency: str, token: str | None
    ) -> dict[str, Any]:
        unit: dict[str, Any] = {
            "reference_id": order_id,
            "amount": {"currency_code": currency, "value": from_minor(amount_minor, currency)},
        }
        if len(key) <= MAX_CUSTOM_ID_LEN:
            unit["custom_id"] = key
        body: dict[str, Any] = {"intent": "CAPTURE", "purchase_units": [unit]}
        if token is not None:
            body["payment_source"] = {"token": {"id": token, "type": "PAYMENT_METHOD_TOKEN"}}
        return body

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        key = request.idempotency_key
        try:
            async with asyncio.timeout(self.timeout_s):
                status, order = await self._call(
                    "POST",
                    "/v2/checkout/orders",
                    json_body=self._order_body(
                        request.order_id, key, request.amount_minor, request.currency,
                        request.payment_method_token,
                    ),
                    headers=await self._authorized(request_id(key, "create")),
                )
                if status == 422 or (status == 400 and _issue(order) in _DECLINE_ISSUES):
                    return ChargeOutcome(ChargeStatus.DECLINED, decline_code=_issue(order))
                if status not in (200, 201) or not isinstance(order.get("id"), str):
                    # Creating moves no money: a failed create is safe to fail over.
                    raise ProviderUnavailable(f"paypal order create answered {status}")
                if _capture(order) is None:
                    status, order = await self._call(
                        "POST",
                        f"/v2/checkout/orders/{order['id']}/capture",
                        json_body={},
                        headers=await self._authorized(request_id(key, "capture")),
                    )
                    if status == 422:
                        return ChargeOutcome(
                            ChargeStatus.DECLINED, decline_code=_issue(order) or "declined"
                        )
                    if status not in (200, 201):
                        return ChargeOutcome(ChargeStatus.PENDING)
        except (TimeoutError, _Unknown):
            return ChargeOutcome(ChargeStatus.PENDING)
        outcome = outcome_of_order(order)
        if outcome.status is ChargeStatus.NOT_FOUND:
            return ChargeOutcome(ChargeStatus.PENDING, outcome.transaction_id)
        return outcome

    async def status(self, ref: ChargeRef) -> ChargeOutcome:
        key = ref.idempotency_key
        try:
            async with asyncio.timeout(self.timeout_s):
                status, order = await self._call(
                    "POST",
                    "/v2/checkout/orders",
                    json_body=self._order_body(
                        ref.order_id, key, ref.amount_minor, ref.currency, None
                    ),
                    headers=await self._authorized(request_id(key, "create")),
                )
        except (TimeoutError, _Unknown, ProviderUnavailable):
            return ChargeOutcome(ChargeStatus.PENDING)
        if status not in (200, 201):
            return ChargeOutcome(ChargeStatus.PENDING)
        return outcome_of_order(order)

    async def refund(
        self, transaction_id: str, amount_minor: int, currency: str, idempotency_key: str
    ) -> RefundOutcome:
        body = {"amount": {"currency_code": currency, "value": from_minor(amount_minor, currency)}}
        try:
            async with asyncio.timeout(self.timeout_s):
                status, refund = await self._call(
                    "POST",
                    f"/v2/payments/captures/{transaction_id}/refund",
                    json_body=body,
                    headers=await self._authorized(request_id(idempotency_key, "refund")),
                )
        except (TimeoutError, _Unknown, ProviderUnavailable) as exc:
            raise RefundFailed(f"paypal refund of {transaction_id}: {exc}") from None
        if status not in (200, 201):
            raise RefundFailed(f"paypal refund of {transaction_id} answered {status}")
        return RefundOutcome(
            str(refund.get("id") or ""), refund.get("status") in ("COMPLETED", "PENDING")
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None


def _issue(body: Mapping[str, Any]) -> str:
    details = body.get("details")
    if isinstance(details, list) and details and isinstance(details[0], Mapping):
        return str(details[0].get("issue") or "")
    return ""
