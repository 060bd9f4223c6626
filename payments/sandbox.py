"""``flashsale payments-sandbox``: a stand-in payment service speaking the subset of
Stripe's and PayPal's HTTP APIs that payments.stripe_provider and payments.paypal_provider
call, so both real client paths run over real HTTP in development, tests and load tests.

Theory of operation: one aiohttp application keeps payment intents (Stripe) and orders
with captures (PayPal) in memory, bounded by ``MAX_OBJECTS`` (oldest forgotten first).
Every mutating call honours its idempotency key (``Idempotency-Key`` /
``PayPal-Request-Id``): the first answer is stored and replayed, concurrent calls with
one key are serialised, and a Stripe key reused with other parameters is refused, as
the real services do. The payment method token decides the outcome: ``pm_card_visa``
and other ``pm_...`` tokens succeed, ``pm_card_declined`` (and
``pm_card_insufficient_funds``) decline, and a seeded share (``decline_rate``) of the
good ones declines too. Switches, flipped at ``POST /_sandbox/config``, shape faults per
API (``stripe``/``paypal``): ``outage`` answers 503 without doing anything, ``hang``
holds requests before acting, ``hang_after_charge`` charges and then withholds the
answer of a charging call (the charge happened, the caller times out); held requests go
on when the switch is turned off (or after ``hang_max_ms``), even if their caller gave
up, as a real provider's would. ``latency_ms`` delays every answer.
``GET /_sandbox/stats`` counts charges (money moved), declines and refunds, per API and
per order. Each settled charge and refund is posted as a signed webhook to
``<webhook_url>/stripe`` or ``/paypal`` by a background sender with bounded retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import secrets
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from cluster.config import ClusterConfig
from cluster.logs import setup_logging
from payments.money import to_minor
from payments.webhooks import STRIPE_SIGNATURE, paypal_headers, stripe_signature, webhook_secret

log = logging.getLogger("payments.sandbox")

APIS = ("stripe", "paypal")
MAX_OBJECTS = 200_000  # intents/orders/refunds/idempotency records kept (oldest dropped)
MAX_TRACKED_ORDERS = 100_000  # orders whose charges are counted one by one in the stats
DEFAULT_HANG_MAX_MS = 120_000  # a held request goes on after this even if still switched on
WEBHOOK_QUEUE_LIMIT = 10_000  # webhooks waiting to be sent; beyond it they are dropped
WEBHOOK_MAX_TRIES = 5
WEBHOOK_BACKOFF_FIRST_S = 0.2
WEBHOOK_TIMEOUT_S = 5.0
TOKEN_TTL_S = 32_400  # PayPal's access token lifetime
SHUTDOWN_TIMEOUT_S = 5.0
DECLINES = {
    "pm_card_declined": "generic_decline",
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_insufficient_funds": "insufficient_funds",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
CARD_LAST4 = {"pm_card_visa": "4242", "pm_card_mastercard": "4444", "pm_card_amex": "8431"}
_TOKEN = re.compile(r"pm_[A-Za-z0-9_]{1,120}")
_SEARCH = re.compile(r"metadata\['(?P<key>[A-Za-z0-9_]+)'\]:'(?P<value>[^']*)'")


# -- settings and counters ------------------------------------------------------------


@dataclass(slots=True)
class SandboxSettings:
    """What the sandbox does; every field but the secrets changes at /_sandbox/config."""

    latency_ms: int = 0
    decline_rate: float = 0.0
    seed: int = 1
    outage: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    hang_after_charge: set[str] = field(default_factory=set)
    hang_max_ms: int = DEFAULT_HANG_MAX_MS
    webhook_url: str = ""
    stripe_webhook_secret: str = ""
    paypal_webhook_secret: str = ""
    paypal_webhook_id: str = "flashsale-webhook"
    paypal_client_id: str = "flashsale-sandbox"
    paypal_client_secret: str = "flashsale-sandbox-secret"

    @classmethod
    def from_config(cls, config: ClusterConfig) -> SandboxSettings:
        p = config.payments
        return cls(
            latency_ms=p.sandbox_latency_ms,
            decline_rate=p.sandbox_decline_rate,
            seed=p.sandbox_seed,
            webhook_url=p.sandbox_webhook_url,
            stripe_webhook_secret=webhook_secret(p, config.secret, "stripe"),
            paypal_webhook_secret=webhook_secret(p, config.secret, "paypal"),
            paypal_webhook_id=p.paypal_webhook_id,
            paypal_client_id=p.paypal_client_id,
            paypal_client_secret=p.paypal_client_secret.reveal(),
        )

    def public(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "decline_rate": self.decline_rate,
            "seed": self.seed,
            "outage": sorted(self.outage),
            "hang": sorted(self.hang),
            "hang_after_charge": sorted(self.hang_after_charge),
            "hang_max_ms": self.hang_max_ms,
            "webhook_url": self.webhook_url,
        }


@dataclass(slots=True)
class Stats:
    requests: int = 0
    charges: int = 0  # money moved
    charged_minor: int = 0
    declines: int = 0
    refunds: int = 0
    outage_answers: int = 0
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    by_api: dict[str, dict[str, int]] = field(
        default_factory=lambda: {api: defaultdict(int) for api in APIS}
    )
    charges_by_order: dict[str, int] = field(default_factory=dict)

    def charged(self, api: str, order_id: str, amount_minor: int) -> None:
        self.charges += 1
        self.charged_minor += amount_minor
        self.by_api[api]["charges"] += 1
        if order_id in self.charges_by_order or len(self.charges_by_order) < MAX_TRACKED_ORDERS:
            self.charges_by_order[order_id] = self.charges_by_order.get(order_id, 0) + 1

    def public(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "charges": self.charges,
            "charged_minor": self.charged_minor,
            "declines": self.declines,
            "refunds": self.refunds,
            "outage_answers": self.outage_answers,
            "webhooks_sent": self.webhooks_sent,
            "webhooks_failed": self.webhooks_failed,
            "by_api": {api: dict(counts) for api, counts in self.by_api.items()},
            "charges_by_order": dict(self.charges_by_order),
        }


class _Bounded(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond MAX_OBJECTS."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > MAX_OBJECTS:
            self.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]


class Sandbox:
    """The sandbox's state and behaviour; ``app()`` serves it."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.rng = random.Random(settings.seed)
        self.switched = asyncio.Event()  # set (then cleared) whenever a switch flips
        self.intents = _Bounded()
        self.pp_orders = _Bounded()
        self.captures = _Bounded()  # capture id -> (order id)
        self.refunded: dict[str, int] = {}  # transaction -> refunded minor units
        self.replies = _Bounded()  # (api, idempotency key) -> (fingerprint, _Answer)
        self.locks: dict[str, asyncio.Lock] = {}  # one per idempotency key in use
        self.lock_users: dict[str, int] = {}
        self.pp_tokens: _Bounded = _Bounded()
        self.webhooks: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(WEBHOOK_QUEUE_LIMIT)
        self.acting: set[asyncio.Task[web.StreamResponse]] = set()  # requests being served

    # -- behaviour switches ------------------------------------------------------------

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Apply a /_sandbox/config body; ValueError names a bad field."""
        s = self.settings
        for name, value in changes.items():
            if name in ("outage", "hang", "hang_after_charge"):
                apis = [value] if isinstance(value, str) else value
                if value is True:
                    apis = list(APIS)
                elif value is False or value is None:
                    apis = []
                if not isinstance(apis, list) or not set(apis) <= set(APIS):
                    raise ValueError(f"{name}: expected a list of {list(APIS)} or true/false")
                setattr(s, name, set(apis))
            elif name in ("latency_ms", "hang_max_ms", "seed"):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{name}: expected an integer >= 0")
                setattr(s, name, value)
                if name == "seed":
                    self.rng = random.Random(value)
            elif name == "decline_rate":
                if not isinstance(value, int | float) or not 0 <= value <= 1:
                    raise ValueError("decline_rate: expected 0..1")
                s.decline_rate = float(value)
            elif name == "webhook_url":
                if not isinstance(value, str):
                    raise ValueError("webhook_url: expected a string")
                s.webhook_url = value.rstrip("/")
            else:
                raise ValueError(f"unknown setting {name!r}")
        self.switched.set()
        self.switched.clear()

    async def _hold(self, api: str, switch: str) -> None:
        """Wait while ``api`` is in the ``switch`` set (at most hang_max_ms)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.hang_max_ms / 1000
        while api in getattr(self.settings, switch) and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.0, deadline - loop.time()))):
                    await self.switched.wait()

    def _decline_code(self, token: str) -> str:
        """Why a charge with ``token`` is declined; "" when it succeeds."""
        if token in DECLINES:
            return DECLINES[token]
        if self.settings.decline_rate and self.rng.random() < self.settings.decline_rate:
            return "generic_decline"
        return ""

    async def _idempotent(
        self, api: str, key: str | None, fingerprint: str, act: Callable[[], Awaitable[_Answer]]
    ) -> _Answer:
        if not key:
            return await act()
        slot = f"{api}\n{key}"
        lock = self.locks.setdefault(slot, asyncio.Lock())
        self.lock_users[slot] = self.lock_users.get(slot, 0) + 1
        try:
            async with lock:
                stored = self.replies.get(slot)
                if stored is not None:
                    if stored[0] != fingerprint and api == "stripe":
                        return _Answer(400, _stripe_error(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                            kind="idempotency_error",
                        ))
                    replay: _Answer = stored[1]
                    return replay
                answer = await act()
                if answer.status < 500:
                    self.replies[slot] = (fingerprint, answer)
                return answer
        finally:
            self.lock_users[slot] -= 1
            if not self.lock_users[slot]:
                del self.lock_users[slot], self.locks[slot]

    def _webhook(self, api: str, event: Mapping[str, Any]) -> None:
        if not self.settings.webhook_url:
            return
        try:
            self.webhooks.put_nowait((api, json.dumps(event, separators=(",", ":")).encode()))
        except asyncio.QueueFull:
            self.stats.webhooks_failed += 1

    async def send_webhooks(self) -> None:
        """The background sender: signs and posts each queued event, with retries."""
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        ) as http:
            while True:
                api, body = await self.webhooks.get()
                await self._deliver(http, api, body)

    async def _deliver(self, http: aiohttp.ClientSession, api: str, body: bytes) -> None:
        s = self.settings
        pause = WEBHOOK_BACKOFF_FIRST_S
        for _ in range(WEBHOOK_MAX_TRIES):
            if api == "stripe":
                headers = {STRIPE_SIGNATURE: stripe_signature(s.stripe_webhook_secret, body)}
            else:
                headers = paypal_headers(
                    s.paypal_webhook_secret, s.paypal_webhook_id, "WH-" + secrets.token_hex(8),
                    body,
                )
            headers["Content-Type"] = "application/json"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(f"{s.webhook_url}/{api}", data=body, headers=headers) as r:
                    if r.status < 300:
                        self.stats.webhooks_sent += 1
                        return
            await asyncio.sleep(pause)
            pause *= 2
        self.stats.webhooks_failed += 1
        log.warning("webhook not delivered", extra={"api": api})

    # -- Stripe ------------------------------------------------------------------------

    async def stripe_create_intent(self, form: Mapping[str, str], key: str | None) -> _Answer:
        fingerprint = json.dumps(sorted(form.items()))

        async def act() -> _Answer:
            amount, currency = form.get("amount", ""), form.get("currency", "")
            token = form.get("payment_method", "")
            if not amount.isdigit() or int(amount) < 1 or not re.fullmatch(r"[a-z]{3}", currency):
                return _Answer(400, _stripe_error("parameter_invalid", "bad amount or currency"))
            if not _TOKEN.fullmatch(token):
                return _Answer(400, _stripe_error(
                    "resource_missing", f"No such PaymentMethod: '{token[:40]}'",
                    param="payment_method",
                ))
            metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
            intent: dict[str, Any] = {
                "id": "pi_" + secrets.token_hex(12),
                "object": "payment_intent",
                "amount": int(amount),
                "currency": currency,
                "created": int(time.time()),
                "metadata": metadata,
                "payment_method": token,
                "latest_charge": None,
                "last_payment_error": None,
                "status": "requires_payment_method",
            }
            decline = self._decline_code(token)
            charge = {
                "id": "ch_" + secrets.token_hex(12),
                "object": "charge",
                "payment_method_details": {
                    "type": "card", "card": {"last4": CARD_LAST4.get(token, "0000")}
                },
            }
            if decline:
                intent["last_payment_error"] = {
                    "type": "card_error", "code": "card_declined", "decline_code": decline,
                    "message": "Your card was declined.",
                }
                self.stats.declines += 1
                self.stats.by_api["stripe"]["declines"] += 1
                self.intents[intent["id"]] = intent
                self._webhook("stripe", _stripe_event("payment_intent.payment_failed", intent))
                error = _stripe_error("card_declined", "Your card was declined.",
                                      kind="card_error", decline_code=decline)
                error["error"]["payment_intent"] = intent
                return _Answer(402, error)
            intent["status"] = "succeeded"
            intent["latest_charge"] = charge
            self.intents[intent["id"]] = intent
            self.stats.charged("stripe", metadata.get("order_id", ""), int(amount))
            self._webhook("stripe", _stripe_event("payment_intent.succeeded", intent))
            return _Answer(200, intent)

        return await self._idempotent("stripe", key, fingerprint, act)

    def stripe_intent(self, intent_id: str) -> _Answer:
        intent = self.intents.get(intent_id)
        if intent is None:
            return _Answer(404, _stripe_error(
                "resource_missing", f"No such payment_intent: '{intent_id[:60]}'", param="intent"
            ))
        return _Answer(200, intent)

    def stripe_search(self, query: str) -> _Answer:
        match = _SEARCH.fullmatch(query.strip())
        if match is None:
            return _Answer(400, _stripe_error("parameter_invalid", "unsupported search query"))
        key, value = match.group("key"), match.group("value")
        found = [i for i in self.intents.values() if i["metadata"].get(key) == value]
        return _Answer(200, {"object": "search_result", "data": found[:10],
                             "has_more": len(found) > 10, "next_page": None,
                             "url": "/v1/payment_intents/search"})

    async def stripe_refund(self, form: Mapping[str, str], key: str | None) -> _Answer:
        fingerprint = json.dumps(sorted(form.items()))

        async def act() -> _Answer:
            intent = self.intents.get(form.get("payment_intent", ""))
            if intent is None or intent["status"] != "succeeded":
                return _Answer(400, _stripe_error(
                    "resource_missing", "No such succeeded payment_intent", param="payment_intent"
                ))
            amount_text = form.get("amount", str(intent["amount"]))
            amount = int(amount_text) if amount_text.isdigit() else -1
            already = self.refunded.get(intent["id"], 0)
            if not 0 < amount <= intent["amount"] - already:
                return _Answer(400, _stripe_error(
                    "charge_already_refunded", "the amount exceeds what is left to refund"
                ))
            self.refunded[intent["id"]] = already + amount
            self.stats.refunds += 1
            self.stats.by_api["stripe"]["refunds"] += 1
            refund = {"id": "re_" + secrets.token_hex(12), "object": "refund", "amount": amount,
                      "currency": intent["currency"], "payment_intent": intent["id"],
                      "status": "succeeded"}
            self._webhook("stripe", _stripe_event("charge.refunded", refund))
            return _Answer(200, refund)

        return await self._idempotent("stripe", key, fingerprint, act)

    # -- PayPal ------------------------------------------------------------------------

    def paypal_token(self, authorization: str | None) -> _Answer:
        expected = base64.b64encode(
            f"{self.settings.paypal_client_id}:{self.settings.paypal_client_secret}".encode()
        ).decode()
        if authorization != f"Basic {expected}":
            return _Answer(401, {"error": "invalid_client",
                                 "error_description": "Client Authentication failed"})
        token = "A21" + secrets.token_urlsafe(24)
        self.pp_tokens[token] = time.monotonic() + TOKEN_TTL_S
        return _Answer(200, {"access_token": token, "token_type": "Bearer",
                             "expires_in": TOKEN_TTL_S})

    def paypal_authorized(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expires = self.pp_tokens.get(authorization[7:])
        return expires is not None and time.monotonic() < expires

    async def paypal_create_order(self, body: Mapping[str, Any], key: str | None) -> _Answer:
        if key and f"paypal\n{key}" in self.replies:
            # PayPal answers a replayed create with the order as it is now.
            order_id = self.replies[f"paypal\n{key}"][1].body.get("id", "")
            order = self.pp_orders.get(order_id)
            if order is not None:
                return _Answer(200, order)

        async def act() -> _Answer:
            units = body.get("purchase_units")
            unit = units[0] if isinstance(units, list) and units else None
            amount = unit.get("amount") if isinstance(unit, dict) else None
            if not isinstance(amount, dict) or body.get("intent") != "CAPTURE":
                return _Answer(400, _paypal_error("INVALID_REQUEST", "MISSING_REQUIRED_PARAMETER"))
            source = body.get("payment_source")
            token = None
            if isinstance(source, dict) and isinstance(source.get("token"), dict):
                token = source["token"].get("id")
            order: dict[str, Any] = {
                "id": secrets.token_hex(9).upper(),
                "intent": "CAPTURE",
                "status": "APPROVED" if isinstance(token, str) else "CREATED",
                "purchase_units": [{
                    "reference_id": unit.get("reference_id", "default") if unit else "default",
                    "custom_id": unit.get("custom_id", "") if unit else "",
                    "amount": amount,
                    "payments": {"captures": []},
                }],
                "payment_source": {"token": {"id": token}} if isinstance(token, str) else {},
            }
            self.pp_orders[order["id"]] = order
            return _Answer(201, order)

        return await self._idempotent("paypal", key, "", act)

    async def paypal_capture(self, order_id: str, key: str | None) -> _Answer:
        async def act() -> _Answer:
            order = self.pp_orders.get(order_id)
            if order is None:
                return _Answer(404, _paypal_error("RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID"))
            if order["status"] == "COMPLETED":
                return _Answer(422, _paypal_error("UNPROCESSABLE_ENTITY", "ORDER_ALREADY_CAPTURED"))
            if order["status"] != "APPROVED":
                return _Answer(422, _paypal_error("UNPROCESSABLE_ENTITY", "ORDER_NOT_APPROVED"))
            token = order["payment_source"]["token"]["id"]
            unit = order["purchase_units"][0]
            capture = {
                "id": secrets.token_hex(9).upper(),
                "status": "COMPLETED",
                "amount": unit["amount"],
                "custom_id": unit["custom_id"],
                "supplementary_data": {"related_ids": {"order_id": order["id"]}},
            }
            if self._decline_code(token):
                # Like PayPal: no capture is made, the order stays approved, no webhook.
                self.stats.declines += 1
                self.stats.by_api["paypal"]["declines"] += 1
                return _Answer(422, _paypal_error("UNPROCESSABLE_ENTITY", "INSTRUMENT_DECLINED"))
            unit["payments"]["captures"].append(capture)
            self.captures[capture["id"]] = order["id"]
            order["status"] = "COMPLETED"
            minor = _minor(unit["amount"])
            self.stats.charged("paypal", unit["reference_id"], minor)
            self._webhook("paypal", _paypal_event("PAYMENT.CAPTURE.COMPLETED", capture))
            return _Answer(201, order)

        return await self._idempotent("paypal", key, order_id, act)

    def paypal_order(self, order_id: str) -> _Answer:
        order = self.pp_orders.get(order_id)
        if order is None:
            return _Answer(404, _paypal_error("RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID"))
        return _Answer(200, order)

    async def paypal_refund(
        self, capture_id: str, body: Mapping[str, Any], key: str | None
    ) -> _Answer:
        async def act() -> _Answer:
            order = self.pp_orders.get(self.captures.get(capture_id, ""))
            if order is None or order["status"] != "COMPLETED":
                return _Answer(404, _paypal_error("RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID"))
            unit = order["purchase_units"][0]
            total = _minor(unit["amount"])
            amount = body.get("amount")
            wanted = _minor(amount) if isinstance(amount, dict) else total
            already = self.refunded.get(capture_id, 0)
            if not 0 < wanted <= total - already:
                return _Answer(422, _paypal_error("UNPROCESSABLE_ENTITY", "CAPTURE_FULLY_REFUNDED"))
            self.refunded[capture_id] = already + wanted
            self.stats.refunds += 1
            self.stats.by_api["paypal"]["refunds"] += 1
            refund = {"id": secrets.token_hex(9).upper(), "status": "COMPLETED",
                      "amount": amount if isinstance(amount, dict) else unit["amount"]}
            return _Answer(201, refund)

        return await self._idempotent("paypal", key, capture_id, act)


def _minor(amount: Mapping[str, Any]) -> int:
    return to_minor(Decimal(str(amount.get("value", "0"))), str(amount.get("currency_code")))


def _stripe_error(
    code: str, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
    decline_code: str | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "code": code, "message": message}
    if param is not None:
        error["param"] = param
    if decline_code is not None:
        error["decline_code"] = decline_code
    return {"error": error}


def _paypal_error(name: str, issue: str) -> dict[str, Any]:
    return {"name": name, "message": issue.replace("_", " ").lower(),
            "details": [{"issue": issue}], "debug_id": secrets.token_hex(6)}


def _stripe_event(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": "evt_" + secrets.token_hex(12), "object": "event", "type": kind,
            "created": int(time.time()), "data": {"object": dict(obj)}}


def _paypal_event(kind: str, resource: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": "WH-" + secrets.token_hex(10).upper(), "event_type": kind,
            "resource_type": "capture", "resource": dict(resource),
            "create_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# -- HTTP --------------------------------------------------------------------------------

SANDBOX = web.AppKey("sandbox", Sandbox)


def _reply(answer: _Answer) -> web.Response:
    return web.json_response(answer.body, status=answer.status)


def _api_of(path: str) -> str | None:
    if path.startswith("/v1/oauth2") or path.startswith("/v2/"):
        return "paypal"
    if path.startswith("/v1/"):
        return "stripe"
    return None


@web.middleware
async def _faults(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Latency, outage and hang switches around every provider API call."""
    sandbox = request.app[SANDBOX]
    api = _api_of(request.path)
    if api is None:
        return await handler(request)
    sandbox.stats.requests += 1
    sandbox.stats.by_api[api]["requests"] += 1
    s = sandbox.settings
    if s.latency_ms:
        await asyncio.sleep(s.latency_ms / 1000)
    if api in s.outage:
        sandbox.stats.outage_answers += 1
        body = (_stripe_error("api_error", "sandbox outage", kind="api_error") if api == "stripe"
                else _paypal_error("SERVICE_UNAVAILABLE", "SERVICE_UNAVAILABLE"))
        return web.json_response(body, status=503)
    # Read the body first and act in a task of its own: a caller that gives up (a timeout
    # closes its connection) does not stop what a real provider would still do.
    await request.read()

    async def act() -> web.StreamResponse:
        await sandbox._hold(api, "hang")
        response = await handler(request)
        if _charges(request):
            await sandbox._hold(api, "hang_after_charge")
        return response

    task = asyncio.get_running_loop().create_task(act())
    sandbox.acting.add(task)
    task.add_done_callback(sandbox.acting.discard)
    return await asyncio.shield(task)


def _charges(request: web.Request) -> bool:
    """Whether the request is one that moves money (a Stripe confirm, a PayPal capture)."""
    path = request.path
    return request.method == "POST" and (
        path == "/v1/payment_intents" or (path.startswith("/v2/") and path.endswith("/capture"))
    )


def _stripe_auth(request: web.Request) -> web.Response | None:
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer sk_"):
        return web.json_response(
            _stripe_error("api_key_invalid", "Invalid API Key provided"),
            status=401,
        )
    return None


async def _form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str)}


async def stripe_create(request: web.Request) -> web.Response:
    if (denied := _stripe_auth(request)) is not None:
        return denied
    answer = await request.app[SANDBOX].stripe_create_intent(
        await _form(request), request.headers.get("Idempotency-Key")
    )
    return _reply(answer)


async def stripe_get(request: web.Request) -> web.Response:
    if (denied := _stripe_auth(request)) is not None:
        return denied
    return _reply(request.app[SANDBOX].stripe_intent(request.match_info["intent_id"]))


async def stripe_search(request: web.Request) -> web.Response:
    if (denied := _stripe_auth(request)) is not None:
        return denied
    return _reply(request.app[SANDBOX].stripe_search(request.query.get("query", "")))


async def stripe_refund(request: web.Request) -> web.Response:
    if (denied := _stripe_auth(request)) is not None:
        return denied
    answer = await request.app[SANDBOX].stripe_refund(
        await _form(request), request.headers.get("Idempotency-Key")
    )
    return _reply(answer)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _paypal_denied(request: web.Request) -> web.Response | None:
    if request.app[SANDBOX].paypal_authorized(request.headers.get("Authorization")):
        return None
    return web.json_response(
        {"error": "invalid_token", "error_description": "Token signature verification failed"},
        status=401,
    )


async def paypal_token(request: web.Request) -> web.Response:
    return _reply(request.app[SANDBOX].paypal_token(request.headers.get("Authorization")))


async def paypal_create(request: web.Request) -> web.Response:
    if (denied := _paypal_denied(request)) is not None:
        return denied
    answer = await request.app[SANDBOX].paypal_create_order(
        await _json_body(request), request.headers.get("PayPal-Request-Id")
    )
    return _reply(answer)


async def paypal_capture(request: web.Request) -> web.Response:
    if (denied := _paypal_denied(request)) is not None:
        return denied
    answer = await request.app[SANDBOX].paypal_capture(
        request.match_info["order_id"], request.headers.get("PayPal-Request-Id")
    )
    return _reply(answer)


async def paypal_get(request: web.Request) -> web.Response:
    if (denied := _paypal_denied(request)) is not None:
        return denied
    return _reply(request.app[SANDBOX].paypal_order(request.match_info["order_id"]))


async def paypal_refund(request: web.Request) -> web.Response:
    if (denied := _paypal_denied(request)) is not None:
        return denied
    answer = await request.app[SANDBOX].paypal_refund(
        request.match_info["capture_id"], await _json_body(request),
        request.headers.get("PayPal-Request-Id"),
    )
    return _reply(answer)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX].stats.public())


async def config(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    if request.method == "POST":
        try:
            sandbox.configure(await _json_body(request))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=422)
    return web.json_response(sandbox.settings.public())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.Response:
    s = request.app[SANDBOX].stats
    lines = []
    for name, value, help_text in (
        ("requests", s.requests, "provider API requests"),
        ("charges", s.charges, "charges that moved money"),
        ("declines", s.declines, "declined charges"),
        ("refunds", s.refunds, "refunds"),
        ("outage_answers", s.outage_answers, "503 answers given by the outage switch"),
        ("webhooks_sent", s.webhooks_sent, "webhooks delivered"),
        ("webhooks_failed", s.webhooks_failed, "webhooks given up"),
    ):
        metric = f"flashsale_sandbox_{name}_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter", f"{metric} {value}"]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _webhook_sender(app: web.Application) -> AsyncIterator[None]:
    sandbox = app[SANDBOX]
    task = asyncio.get_running_loop().create_task(sandbox.send_webhooks(), name="webhooks")
    yield
    for running in [task, *sandbox.acting]:  # held requests end with the process
        running.cancel()
    for running in [task, *sandbox.acting]:
        with contextlib.suppress(asyncio.CancelledError):
            await running


def create_app(settings: SandboxSettings) -> web.Application:
    """The sandbox application (one per process)."""
    app = web.Application(middlewares=[_faults])
    app[SANDBOX] = Sandbox(settings)
    app.router.add_post("/v1/payment_intents", stripe_create)
    app.router.add_get("/v1/payment_intents/search", stripe_search, allow_head=False)
    app.router.add_get("/v1/payment_intents/{intent_id}", stripe_get, allow_head=False)
    app.router.add_post("/v1/refunds", stripe_refund)
    app.router.add_post("/v1/oauth2/token", paypal_token)
    app.router.add_post("/v2/checkout/orders", paypal_create)
    app.router.add_get("/v2/checkout/orders/{order_id}", paypal_get, allow_head=False)
    app.router.add_post("/v2/checkout/orders/{order_id}/capture", paypal_capture)
    app.router.add_post("/v2/payments/captures/{capture_id}/refund", paypal_refund)
    app.router.add_get("/_sandbox/stats", stats, allow_head=False)
    app.router.add_get("/_sandbox/config", config, allow_head=False)
    app.router.add_post("/_sandbox/config", config)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.cleanup_ctx.append(_webhook_sender)
    return app


def main(config: ClusterConfig) -> None:
    """Run the sandbox at ``[payments].sandbox_listen`` until SIGTERM/SIGINT."""
    setup_logging("payments-sandbox")
    listen = config.payments.sandbox_listen
    if listen is None:
        raise SystemExit("payments.sandbox_listen is not set in the config")
    settings = SandboxSettings.from_config(config)
    log.info("payments sandbox starting", extra={"listen": str(listen), **settings.public()})
    web.run_app(
        create_app(settings),
        host=listen.host,
        port=listen.port,
        loop=uvloop.new_event_loop(),
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=None,
        access_log=None,
        handle_signals=True,
    )
    log.info("payments sandbox stopped")
