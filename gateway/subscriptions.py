"""``POST`` and ``DELETE /products/{product_id}/subscribe``: a shopper follows (or stops
following) a product's stock notices, sold out and back in stock, by email and/or SMS.

Theory of operation: the gateway authenticates the shopper (bearer token), validates the
body ``{"email"?, "phone"?}`` (at least one; a phone is E.164 and, in that field, never
taken for a card number), checks that the product exists (edge cache, else a node),
seals the contact details under the shopper's data key (``gateway.pii``: personal data
leaves the gateway sealed only) and forwards ``{user_id, product_id, sealed}`` to the
notifier's internal API (``[notifier] listen``, the cluster's internal token), which
stores the subscription. A refusal of the notifier (too many subscriptions, say) is
answered as the notifier put it; a notifier that is down or not configured is 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from cluster.auth import internal_token
from cluster.config import ClusterConfig
from cluster.errors import NotFound
from gateway import front_door
from gateway.bodies import (
    EMAIL_PATTERN,
    MAX_EMAIL_LEN,
    MAX_PHONE_LEN,
    PHONE_PATTERN,
    parse_id,
    read_json,
)
from gateway.identity import InvalidToken, bearer_user
from gateway.pii import seal_details_async
from gateway.problems import PROBLEM_BASE, Problem, invalid_input, not_found, unauthorized
from gateway.state import STATE, GatewayState

NOTIFIER_TIMEOUT_S = 5.0  # the notifier answers a subscription within this, or 503
PHONE_FIELDS = frozenset({"phone"})
PATH = "/products/{product_id}/subscribe"


class NotifierLink:
    """The gateway's HTTP client of the notifier's internal API."""

    def __init__(self, config: ClusterConfig) -> None:
        listen = config.notifier.listen
        self.base = listen.url if listen is not None else None
        self._headers = {"Authorization": f"Bearer {internal_token(config.secret)}"}
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """The notifier's status and JSON answer; a 503 Problem when it cannot be asked."""
        if self.base is None:
            raise notifications_unavailable("notifications are not configured ([notifier] listen)")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=NOTIFIER_TIMEOUT_S), headers=self._headers
            )
        try:
            async with self._session.request(method, self.base + path, json=body) as resp:
                answer = await resp.json(content_type=None)
                return resp.status, answer if isinstance(answer, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise notifications_unavailable("the notification service did not answer") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


NOTIFIER_LINK = web.AppKey("notifier_link", NotifierLink)


def notifications_unavailable(detail: str) -> Problem:
    return Problem(
        503,
        "notifications-unavailable",
        "Notifications unavailable",
        detail,
        headers={"Retry-After": "1"},
    )


def parse_subscription(body: Mapping[str, Any]) -> dict[str, str]:
    """Validate ``{"email"?, "phone"?}`` (at least one) into the details to seal."""
    unknown = sorted(set(body) - {"email", "phone"})
    if unknown:
        raise invalid_input(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    details: dict[str, str] = {}
    email, phone = body.get("email"), body.get("phone")
    if email is not None:
        if (
            not isinstance(email, str)
            or len(email) > MAX_EMAIL_LEN
            or not EMAIL_PATTERN.fullmatch(email)
        ):
            raise invalid_input("email must be an email address", field="email")
        details["email"] = email
    if phone is not None:
        if (
            not isinstance(phone, str)
            or len(phone) > MAX_PHONE_LEN
            or not PHONE_PATTERN.fullmatch(phone)
        ):
            raise invalid_input(
                "phone must be an E.164 number (+ and country code, digits only: +15550001234)",
                field="phone",
            )
        details["phone"] = phone
    if not details:
        raise invalid_input("give an email address, a phone number or both", field="email")
    return details


def _shopper(request: web.Request, state: GatewayState) -> str:
    try:
        return bearer_user(state.config.secret, request.headers.get("Authorization"))
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None


async def _known_product(state: GatewayState, product_id: str) -> None:
    if state.cache.product(product_id) is not None:
        return
    try:
        await state.cluster.get(f"/v1/products/{quote(product_id, safe='')}", prefer_leader=False)
    except NotFound:
        raise not_found("product", product_id) from None


def _relayed(status: int, answer: Mapping[str, Any]) -> Problem:
    """The notifier's refusal as the gateway's problem (its 5xx as 503)."""
    if status >= 500 or status in (401, 403):
        return notifications_unavailable("the notification service refused or failed")
    kind = str(answer.get("type", ""))
    slug = kind.removeprefix(PROBLEM_BASE) if kind.startswith(PROBLEM_BASE) else "refused"
    return Problem(
        status, slug, str(answer.get("title") or "Refused"), str(answer.get("detail") or "")
    )


async def subscribe(request: web.Request) -> web.Response:
    """POST /products/{product_id}/subscribe {email?, phone?}."""
    state = request.app[STATE]
    user = _shopper(request, state)
    product_id = parse_id(request.match_info["product_id"], "product_id")
    details = parse_subscription(await read_json(request, phone_fields=PHONE_FIELDS))
    await _known_product(state, product_id)
    sealed = await seal_details_async(user, details)
    status, answer = await request.app[NOTIFIER_LINK].request(
        "POST",
        "/v1/subscriptions",
        {"user_id": user, "product_id": product_id, "sealed": sealed},
    )
    if status != 200:
        raise _relayed(status, answer)
    return web.json_response(
        {"product_id": product_id, "subscribed": True, "channels": answer.get("channels", [])}
    )


async def unsubscribe(request: web.Request) -> web.Response:
    """DELETE /products/{product_id}/subscribe."""
    state = request.app[STATE]
    user = _shopper(request, state)
    product_id = parse_id(request.match_info["product_id"], "product_id")
    path = f"/v1/subscriptions/{quote(product_id, safe='')}/{quote(user, safe='')}"
    status, answer = await request.app[NOTIFIER_LINK].request("DELETE", path)
    if status != 200:
        raise _relayed(status, answer)
    return web.json_response({"product_id": product_id, "subscribed": False})


async def _link(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[NOTIFIER_LINK].close()


def add_subscriptions(app: web.Application, state: GatewayState) -> None:
    """Attach the subscription routes and the notifier client to the gateway."""
    app[NOTIFIER_LINK] = NotifierLink(state.config)
    front_door.add_routes(app, [web.post(PATH, subscribe), web.delete(PATH, unsubscribe)])
    app.cleanup_ctx.append(_link)


def subscription_paths() -> dict[str, Any]:
    """The OpenAPI ``paths`` entry of the routes above (merged by gateway.openapi)."""
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

    def answer(description: str) -> dict[str, Any]:
        return {"description": description, "content": problem}

    parameters = [
        {
            "name": "product_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
        }
    ]
    result = {
        "type": "object",
        "required": ["product_id", "subscribed"],
        "properties": {
            "product_id": {"type": "string"},
            "subscribed": {"type": "boolean"},
            "channels": {"type": "array", "items": {"type": "string", "enum": ["email", "sms"]}},
        },
    }
    errors = {
        "401": answer("Missing, forged or expired bearer token"),
        "404": answer("Unknown product"),
        "503": answer("The notification service is down or not configured"),
    }
    return {
        PATH: {
            "post": {
                "summary": "Be told by email and/or SMS when the product sells out or is back",
                "description": (
                    "The contact details are sealed (encrypted under the shopper's data key) "
                    "before they leave the gateway. A second call replaces the first."
                ),
                "security": [{"shopperToken": []}],
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "minProperties": 1,
                                "properties": {
                                    "email": {
                                        "type": "string",
                                        "format": "email",
                                        "maxLength": MAX_EMAIL_LEN,
                                    },
                                    "phone": {
                                        "type": "string",
                                        "pattern": "^" + PHONE_PATTERN.pattern + "$",
                                        "description": "E.164, e.g. +15550001234",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "subscribed; channels the notices will use",
                        "content": {"application/json": {"schema": result}},
                    },
                    **errors,
                    "409": answer("The shopper follows too many products"),
                    "422": answer("Invalid input (neither email nor phone, a malformed one)"),
                },
            },
            "delete": {
                "summary": "Stop the product's stock notices",
                "security": [{"shopperToken": []}],
                "parameters": parameters,
                "responses": {
                    "200": {
                        "description": "not (or no longer) subscribed",
                        "content": {"application/json": {"schema": result}},
                    },
                    **errors,
                },
            },
        }
    }
