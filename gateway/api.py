"""The shopper API's handlers and route table.

Writes (add-to-cart, reserve-inventory, checkout, release) authenticate the shopper,
validate the body, build one ledger command carrying a user-scoped idempotency key and
hand it to the batcher, which answers with the leader's result for that command.
Product and inventory reads come from the edge cache (header ``X-Ledger-Index`` says
which ledger index they reflect), falling back to a node while the cache is not yet
caught up. Cart and order reads go to the leader (read-your-writes) and answer 404 for
anything that is not the caller's, exactly as for something that does not exist.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn
from urllib.parse import quote

from aiohttp import web

from cluster.errors import ClusterError, NotFound
from gateway import front_door, shapes
from gateway.bodies import parse_checkout, parse_id, read_body, read_json, reserve_body
from gateway.idempotency import HEADER, ledger_key, new_client_key, valid_client_key
from gateway.identity import InvalidToken, bearer_user
from gateway.openapi import openapi_document
from gateway.payment import PAYMENTS, parse_payment, payment_result, webhook_notice
from gateway.pii import prepare_key, seal_details_async
from gateway.problems import (
    Problem,
    encoded_response,
    from_exception,
    invalid_input,
    not_found,
    payment_declined,
    payment_refunded,
    rejection,
    sold_out,
    unauthorized,
    user_mismatch,
)
from gateway.state import STATE, GatewayState

INDEX_HEADER = "X-Ledger-Index"
READY_LEADER_TIMEOUT_S = 2.0  # /readyz asks who leads for at most this long
# Checkout refusals after which the cart's units are not the shopper's any more.
CHECKOUT_FAILED_SLUGS = {"hold-expired", "empty-cart", "sold-out"}


def _json(body: Mapping[str, Any], *, status: int = 200, index: int | None = None,
          headers: Mapping[str, str] | None = None) -> web.Response:
    out = dict(headers or {})
    if index is not None:
        out[INDEX_HEADER] = str(index)
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
        content_type="application/json",
        headers=out,
    )


def _state(request: web.Request) -> GatewayState:
    return request.app[STATE]


def _shopper(request: web.Request) -> str:
    """The user id the bearer token proves; 401 otherwise."""
    try:
        return bearer_user(_state(request).config.secret, request.headers.get("Authorization"))
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None


def _client_key(request: web.Request) -> str:
    raw = request.headers.get(HEADER)
    if raw is None:
        return new_client_key()
    if not valid_client_key(raw):
        raise invalid_input(
            f"{HEADER} must be 1..128 visible ASCII characters without spaces", field=HEADER
        )
    return raw


def _same_user(body_user: str, token_user: str) -> None:
    if body_user != token_user:
        raise user_mismatch()


async def _keyed(key: str, write: Callable[[], Awaitable[web.Response]]) -> web.Response:
    """Run a write; every answer, error or not, tells the client its Idempotency-Key."""
    try:
        response = await write()
    except Exception as exc:
        _raise_keyed(exc, key)
    response.headers[HEADER] = key
    return response


def _raise_keyed(exc: Exception, key: str) -> NoReturn:
    """Re-raise ``exc`` as its problem carrying the Idempotency-Key (a bug as it is)."""
    problem = from_exception(exc)
    if problem is None:
        raise exc
    problem.headers[HEADER] = key
    raise problem from exc


async def _apply(state: GatewayState, command: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Apply one command through the batcher; a refusal becomes its Problem."""
    index, result = await state.batcher.submit(command, timeout_s=state.request_deadline_s)
    if result.get("ok") is False or result.get("type") == "rejected":
        raise rejection(command, result)
    return index, result


def _node_path(kind: str, thing_id: str) -> str:
    """``/v1/{kind}/{id}`` on a node, the id percent-encoded whole: an id holding '/',
    '?' or '#' names a record, never another path of the internal API."""
    return f"/v1/{kind}/{quote(thing_id, safe='')}"


def _index(answer: Mapping[str, Any]) -> int:
    index = answer.get("index")
    return index if isinstance(index, int) else 0


async def _read(state: GatewayState, path: str, *, prefer_leader: bool = True) -> dict[str, Any]:
    """GET from the cluster. Shopper records (holds, carts, orders) come from the leader
    only: a follower still catching up would deny a hold the shopper was just given."""
    async with asyncio.timeout(state.request_deadline_s):
        return await state.cluster.get(
            path, prefer_leader=prefer_leader, leader_only=prefer_leader
        )


# -- writes ----------------------------------------------------------------------------


async def reserve_inventory(request: web.Request) -> web.Response:
    """POST /reserve-inventory and POST /add-to-cart {user_id, product_id, quantity}: one
    hold. (What ``_keyed`` does, inline: a sold-out refusal is a hot path.)"""
    state = _state(request)
    user = _shopper(request)
    key = _client_key(request)
    try:
        body = reserve_body(await read_body(request))
        _same_user(body.user_id, user)
        command = {
            "type": "reserve",
            "key": ledger_key(user, key),
            "user_id": user,
            "product_id": body.product_id,
            "quantity": body.quantity,
        }
        response = _edge_checks(state, command, body.quantity, request.path, key)
        if response is None:
            index, result = await _apply(state, command)
            response = _json(shapes.hold_placed(result, index), index=index,
                             headers={HEADER: key})  # fmt: skip
            prepare_key(user)  # a checkout is likely next: its data key, made meanwhile
    except Exception as exc:
        _raise_keyed(exc, key)
    return response


def _edge_checks(
    state: GatewayState, command: Mapping[str, Any], quantity: int, path: str, key: str
) -> web.Response | None:
    """Refusals the edge cache can make alone (raised, or the sold-out answer returned,
    carrying the client's Idempotency-Key ``key``); acceptance is always the leader's."""
    product_id = str(command["product_id"])
    cache = state.cache
    limit = cache.per_user_limit(product_id)
    if limit is not None and quantity > limit:
        raise invalid_input(
            f"quantity must be at most the per-shopper limit of {limit}", field="quantity"
        )
    if (
        cache.is_sold_out(product_id)
        and state.follower.ready(time.monotonic())
        and not cache.hold_key_seen(str(command["key"]))
    ):
        body = cache.encoded(product_id, path, _sold_out_body(path))
        if body is None:  # pragma: no cover - is_sold_out said the product is cached
            return None
        state.metrics.sold_out_short_circuits.inc()
        # Sent often alike at a sell-out: its bytes are kept per (product, index, path).
        return encoded_response(409, body, {INDEX_HEADER: str(cache.index), HEADER: key})
    return None


@functools.cache  # one per route path (two)
def _sold_out_body(path: str) -> Callable[[Mapping[str, Any], int], bytes]:
    def encode(product: Mapping[str, Any], index: int) -> bytes:
        problem = sold_out(str(product["product_id"]), available=0, index=index)
        problem.extensions["source"] = "edge-cache"
        return problem.encode(path)

    return encode


async def checkout(request: web.Request) -> web.Response:
    """POST /checkout: the cart's active holds become one order awaiting payment."""
    state = _state(request)
    user = _shopper(request)
    key = _client_key(request)

    async def write() -> web.Response:
        body = parse_checkout(await read_json(request, phone_fields=frozenset({"phone"})))
        _same_user(body.user_id, user)
        details: dict[str, object] = {"shipping_address": body.shipping_address}
        if body.email is not None:
            details["email"] = body.email
        if body.phone is not None:
            details["phone"] = body.phone
        command = {
            "type": "checkout",
            "key": ledger_key(user, key),
            "user_id": user,
            "cart_id": body.cart_id,
            "payment_method": body.payment_method,
            "sealed_details": await seal_details_async(user, details),
        }
        try:
            index, result = await _apply(state, command)
        except Problem as problem:
            if problem.slug in CHECKOUT_FAILED_SLUGS:
                problem.extensions["inventory_status"] = "failed"
                problem.extensions["payment_status"] = "failed"
            raise
        return _json(shapes.order_placed(result, index), index=index)

    return await _keyed(key, write)


async def release(request: web.Request) -> web.Response:
    """DELETE /cart/{cart_id}/items/{hold_id}: give a hold back before it expires."""
    state = _state(request)
    user = _shopper(request)
    key = _client_key(request)
    cart_id = parse_id(request.match_info["cart_id"], "cart_id")
    hold_id = parse_id(request.match_info["hold_id"], "hold_id")

    async def write() -> web.Response:
        try:
            answer = await _read(state, _node_path("holds", hold_id))
        except NotFound:
            raise not_found("hold", hold_id) from None
        hold = answer.get("hold")
        if not isinstance(hold, dict) or hold.get("user_id") != user:
            raise not_found("hold", hold_id)
        if hold.get("cart_id") != cart_id:
            raise not_found("hold", hold_id)
        command = {
            "type": "release",
            "key": ledger_key(user, key),
            "user_id": user,
            "hold_id": hold_id,
        }
        index, result = await _apply(state, command)
        return _json(shapes.hold_released(result, cart_id, index), index=index)

    return await _keyed(key, write)


async def payment(request: web.Request) -> web.Response:
    """POST /payment {order_id, payment_method, amount}: charge, record, answer.

    200 paid (also for a repeat of a paid order: one charge), 202 outcome pending (the
    reconciler settles it), 402 declined (retry until the deadline).
    """
    user = _shopper(request)
    key = _client_key(request)

    async def write() -> web.Response:
        body = parse_payment(await read_json(request))
        answer = await request.app[PAYMENTS].pay(
            user, body.order_id, body.payment_method, body.amount
        )
        result = payment_result(answer)
        if answer.kind == "declined":
            raise payment_declined(
                **result, decline_code=answer.decline_code, pay_by_ms=answer.pay_by_ms
            )
        if answer.kind == "refunded":
            raise payment_refunded(**result)
        return _json(result, status=202 if answer.kind == "pending" else 200)

    return await _keyed(key, write)


async def webhook(request: web.Request) -> web.Response:
    """POST /webhooks/{provider}: a provider's signed event about a charge."""
    state = _state(request)
    body = await request.read()
    notice = webhook_notice(state, request.match_info["provider"], body, request.headers)
    if notice is None:
        return _json({"received": True, "settled": "ignored"})
    settled = await request.app[PAYMENTS].settle_notice(
        provider=notice.provider,
        order_id=notice.order_id,
        attempt_no=notice.attempt_no,
        key=notice.attempt_key,
        succeeded=notice.outcome == "succeeded",
        transaction_id=notice.transaction_id,
        amount_minor=notice.amount_minor,
        currency=notice.currency,
    )
    return _json({"received": True, "settled": settled.kind})


# -- reads -----------------------------------------------------------------------------


def _cache_ready(state: GatewayState) -> bool:
    return state.follower.ready(time.monotonic())


async def inventory(request: web.Request) -> web.Response:
    """GET /inventory/{product_id}: {product_id, available_quantity}, from the edge cache."""
    state = _state(request)
    product_id = parse_id(request.match_info["product_id"], "product_id")
    cache = state.cache
    if cache.available(product_id) is not None:
        # Encoded once per ledger index: a read is a lookup and a Response.
        body = cache.encoded(product_id, "inventory", _inventory_body)
        if body is not None:
            return web.Response(
                body=body,
                content_type="application/json",
                headers={INDEX_HEADER: str(cache.index), "X-Cache": "hit"},
            )
    if _cache_ready(state):
        raise not_found("product", product_id)
    product, index = await _product_from_node(state, product_id)
    return _json(shapes.inventory(product, index), index=index, headers={"X-Cache": "miss"})


def _inventory_body(product: Mapping[str, Any], index: int) -> bytes:
    return json.dumps(shapes.inventory(product, index), separators=(",", ":")).encode("utf-8")


async def _product_from_node(state: GatewayState, product_id: str) -> tuple[dict[str, Any], int]:
    try:
        answer = await _read(state, _node_path("products", product_id), prefer_leader=False)
    except NotFound:
        raise not_found("product", product_id) from None
    product = answer.get("product")
    if not isinstance(product, dict):
        raise not_found("product", product_id)
    return product, _index(answer)


async def products(request: web.Request) -> web.Response:
    """GET /products: every product with its terms and live stock."""
    state = _state(request)
    if _cache_ready(state):
        index, items = state.cache.index, state.cache.products()
        source = "hit"
    else:
        answer = await _read(state, "/v1/products", prefer_leader=False)
        raw = answer.get("products")
        items = [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
        index = _index(answer)
        source = "miss"
    body = {"products": [shapes.product(p) for p in items], "ledger_index": index}
    return _json(body, index=index, headers={"X-Cache": source})


async def product(request: web.Request) -> web.Response:
    """GET /products/{product_id}: price, sale window, per-shopper limit, available."""
    state = _state(request)
    product_id = parse_id(request.match_info["product_id"], "product_id")
    cached = state.cache.product(product_id)
    if cached is not None and "name" in cached:
        index = state.cache.index
        body = dict(shapes.product(cached), ledger_index=index)
        return _json(body, index=index, headers={"X-Cache": "hit"})
    if _cache_ready(state) and cached is None:
        raise not_found("product", product_id)
    found, index = await _product_from_node(state, product_id)
    body = dict(shapes.product(found), ledger_index=index)
    return _json(body, index=index, headers={"X-Cache": "miss"})


async def cart(request: web.Request) -> web.Response:
    """GET /cart/{cart_id}: the caller's cart and its holds."""
    state = _state(request)
    user = _shopper(request)
    cart_id = parse_id(request.match_info["cart_id"], "cart_id")
    try:
        answer = await _read(state, _node_path("carts", cart_id))
    except NotFound:
        raise not_found("cart", cart_id) from None
    found = answer.get("cart")
    if not isinstance(found, dict) or found.get("user_id") != user:
        raise not_found("cart", cart_id)
    raw_holds = answer.get("holds", found.get("holds"))
    holds = [h for h in raw_holds if isinstance(h, dict)] if isinstance(raw_holds, list) else []
    index = _index(answer)
    return _json(shapes.cart(found, holds, index), index=index)


async def order(request: web.Request) -> web.Response:
    """GET /orders/{order_id}: the caller's order, without its personal details."""
    state = _state(request)
    user = _shopper(request)
    order_id = parse_id(request.match_info["order_id"], "order_id")
    try:
        answer = await _read(state, _node_path("orders", order_id))
    except NotFound:
        raise not_found("order", order_id) from None
    found = answer.get("order")
    if not isinstance(found, dict) or found.get("user_id") != user:
        raise not_found("order", order_id)
    index = _index(answer)
    return _json(shapes.order(found, index), index=index)


# -- operations ------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process answers."""
    return _json({"ok": True, "gateway": _state(request).gateway_id})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 when a leader is known and the edge cache is caught up."""
    state = _state(request)
    leader_id: str | None = None
    try:
        async with asyncio.timeout(READY_LEADER_TIMEOUT_S):
            leader = await state.cluster.leader()
        leader_id = None if leader is None else leader.id
    except (TimeoutError, ClusterError):
        leader_id = None
    caught_up = _cache_ready(state)
    facts = {
        "leader": leader_id,
        "cache_caught_up": caught_up,
        "cache_index": state.cache.index,
        "feed_last_index": state.follower.status.node_last_index,
    }
    if leader_id is None or not caught_up:
        raise Problem(
            503,
            "not-ready",
            "Not ready",
            "no leader known" if leader_id is None else "the edge cache is catching up",
            headers={"Retry-After": "1"},
            **facts,
        )
    return _json({"ready": True, **facts})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text."""
    return _state(request).metrics.response()


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: this API described in OpenAPI 3.1."""
    return _json(openapi_document())


def add_routes(app: web.Application) -> None:
    """Every public route of the gateway (the OpenAPI document describes each)."""
    front_door.add_routes(
        app,
        [
            web.post("/add-to-cart", reserve_inventory),  # the same hold
            web.post("/reserve-inventory", reserve_inventory),
            web.post("/checkout", checkout),
            web.post("/payment", payment),
            web.post("/webhooks/{provider}", webhook),
            web.get("/inventory/{product_id}", inventory, allow_head=False),
            web.get("/products", products, allow_head=False),
            web.get("/products/{product_id}", product, allow_head=False),
            web.get("/cart/{cart_id}", cart, allow_head=False),
            web.delete("/cart/{cart_id}/items/{hold_id}", release),
            web.get("/orders/{order_id}", order, allow_head=False),
            web.get("/healthz", healthz, allow_head=False),
            web.get("/readyz", readyz, allow_head=False),
            web.get("/metrics", metrics, allow_head=False),
            web.get("/openapi.json", openapi, allow_head=False),
        ],
    )
