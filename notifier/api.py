"""The notifier's internal HTTP API: subscriptions (from the gateways), health, metrics.

Every route except ``GET /healthz`` and ``GET /metrics`` needs the cluster's internal
token (``Authorization: Bearer <cluster.auth.internal_token(secret)>``), as the nodes'
API does. Errors are ``application/problem+json`` with a stable type URI.

- ``POST /v1/subscriptions`` ``{"user_id", "product_id", "sealed"}``: the shopper follows
  the product's stock notices at the addresses inside ``sealed`` (details sealed by the
  gateway for that very shopper: ``{"email"?, "phone"?}``). Answers 200
  ``{"product_id", "user_id", "subscribed": true, "channels": [...]}``.
- ``DELETE /v1/subscriptions/{product_id}/{user_id}``: 200 ``{"subscribed": false,
  "removed": bool}``.
- ``GET /v1/outbox``: the feed position and the outbox's rows by status (operators).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cluster.auth import check_bearer
from ledger.limits import MAX_TEXT_LEN
from ledger.validation import id_problem
from notifier.outbox import TooManySubscriptions
from notifier.service import NoAddress, Notifier, SealedForAnother
from pii.errors import KeyErased, KeyNotFound, MalformedSealed, TamperedError
from snapshots.database import DatabaseError

log = logging.getLogger("notifier.api")

PROBLEM_BASE = "https://flashsale.dev/problems/"
MAX_BODY_BYTES = 16 * 1024
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
NOTIFIER = web.AppKey("notifier", Notifier)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiProblem(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str = "") -> None:
        super().__init__(f"{status} {slug}: {detail or title}")
        self.status, self.slug, self.title, self.detail = status, slug, title, detail

    def response(self) -> web.Response:
        doc: dict[str, Any] = {"type": PROBLEM_BASE + self.slug, "title": self.title}
        doc["status"] = self.status
        if self.detail:
            doc["detail"] = self.detail
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return web.Response(
            status=self.status,
            body=json.dumps(doc).encode("utf-8"),
            content_type="application/problem+json",
            headers=headers,
        )


def invalid(detail: str) -> ApiProblem:
    return ApiProblem(422, "invalid-input", "Invalid input", detail)


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path not in OPEN_PATHS and not check_bearer(
            request.headers.get("Authorization"), request.app[NOTIFIER].config.secret
        ):
            raise ApiProblem(401, "unauthorized", "Unauthorized", "internal token required")
        return await handler(request)
    except ApiProblem as p:
        return p.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = "not-found" if exc.status == 404 else "http-error"
        return ApiProblem(exc.status, slug, exc.reason or "Error").response()
    except DatabaseError as exc:
        log.warning("outbox or key store unavailable", extra={"error": str(exc)[:300]})
        return ApiProblem(503, "unavailable", "Unavailable", "storage unavailable").response()
    except Exception:
        log.exception("notifier API request failed", extra={"path": request.path})
        return ApiProblem(500, "internal", "Internal error").response()


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        value = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ApiProblem(400, "malformed-json", "Malformed JSON body") from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiProblem(413, "body-too-large", "Body too large") from None
    if not isinstance(value, dict):
        raise invalid("the body must be a JSON object")
    return value


def _id(value: object, name: str) -> str:
    problem = id_problem(name, value)
    if problem is not None or not isinstance(value, str):
        raise invalid(problem or f"{name} must be a string")
    return value


async def post_subscription(request: web.Request) -> web.Response:
    body = await _body(request)
    unknown = sorted(set(body) - {"user_id", "product_id", "sealed"})
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}")
    user_id = _id(body.get("user_id"), "user_id")
    product_id = _id(body.get("product_id"), "product_id")
    sealed = body.get("sealed")
    if not isinstance(sealed, str) or not 0 < len(sealed) <= MAX_TEXT_LEN:
        raise invalid(f"sealed must be sealed details of 1..{MAX_TEXT_LEN} characters")
    try:
        done = await request.app[NOTIFIER].subscribe(product_id, user_id, sealed)
    except (SealedForAnother, NoAddress, MalformedSealed, KeyNotFound, TamperedError) as exc:
        raise invalid(str(exc)) from None
    except KeyErased as exc:
        raise ApiProblem(410, "erased", "Shopper erased", str(exc)) from None
    except TooManySubscriptions as exc:
        raise ApiProblem(
            409, "too-many-subscriptions", "Too many subscriptions", str(exc)
        ) from None
    return web.json_response(
        {
            "product_id": done.product_id,
            "user_id": done.user_id,
            "subscribed": True,
            "channels": [c.value for c in done.channels],
        }
    )


async def delete_subscription(request: web.Request) -> web.Response:
    product_id = _id(request.match_info["product_id"], "product_id")
    user_id = _id(request.match_info["user_id"], "user_id")
    removed = await request.app[NOTIFIER].unsubscribe(product_id, user_id)
    return web.json_response(
        {"product_id": product_id, "user_id": user_id, "subscribed": False, "removed": removed}
    )


async def get_outbox(request: web.Request) -> web.Response:
    return web.json_response(await request.app[NOTIFIER].refresh_gauges())


async def get_healthz(request: web.Request) -> web.Response:
    follower = request.app[NOTIFIER].follower
    return web.json_response(
        {"ok": True, "feed_index": follower.position if follower is not None else -1}
    )


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[NOTIFIER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(notifier: Notifier) -> web.Application:
    """The notifier's HTTP application."""
    app = web.Application(middlewares=[problems], client_max_size=MAX_BODY_BYTES)
    app[NOTIFIER] = notifier
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/v1/subscriptions", post_subscription)
    app.router.add_delete("/v1/subscriptions/{product_id}/{user_id}", delete_subscription)
    app.router.add_get("/v1/outbox", get_outbox)
    return app
