"""problem+json: the one mapping from refusals and failures to HTTP (gateway.problems),
and request-body validation (gateway.bodies)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cluster.errors import CommitUnknown, InvalidCommand, NoLeader, Unreachable
from gateway import bodies, front_door
from gateway.bodies import (
    MAX_BODY_BYTES,
    decode_json,
    parse_address,
    parse_checkout,
    parse_reserve,
    read_json,
)
from gateway.front_door import FrontDoor
from gateway.metrics import GatewayMetrics
from gateway.overload import InFlight, InFlightLimits
from gateway.problems import PROBLEM_BASE, Problem, rejection
from ledger.reasons import Reason

EXPECTED = {
    Reason.SOLD_OUT: (409, "sold-out"),
    Reason.LIMIT_REACHED: (409, "limit-reached"),
    Reason.NOT_OPEN: (409, "not-open"),
    Reason.CLOSED: (409, "sale-closed"),
    Reason.HOLD_EXPIRED: (410, "hold-expired"),
    Reason.UNKNOWN_HOLD: (404, "unknown-hold"),
    Reason.NOT_OWNER: (404, "unknown-hold"),  # for a release: indistinguishable from unknown
    Reason.INVALID: (422, "invalid-input"),
    Reason.UNKNOWN_PRODUCT: (404, "unknown-product"),
    Reason.UNKNOWN_CART: (404, "unknown-cart"),
    Reason.UNKNOWN_ORDER: (404, "unknown-order"),
    Reason.ALREADY_EXISTS: (409, "already-exists"),
    Reason.EMPTY_CART: (409, "empty-cart"),
    Reason.NOT_PENDING: (409, "not-pending"),
    Reason.KEY_REUSED: (422, "key-reused"),
    Reason.AMOUNT_MISMATCH: (422, "amount-mismatch"),
}

RELEASE = {"type": "release", "key": "u:k", "user_id": "u", "hold_id": "h9"}


def test_every_ledger_reason_has_a_mapping() -> None:
    assert set(EXPECTED) == set(Reason)


@pytest.mark.parametrize(("reason", "expected"), sorted(EXPECTED.items()))
def test_ledger_reasons_map_to_status_and_stable_type(
    reason: Reason, expected: tuple[int, str]
) -> None:
    result = {"type": "rejected", "ok": False, "reason": reason, "message": "m"}
    problem = rejection(RELEASE, result)
    assert (problem.status, problem.type) == (expected[0], PROBLEM_BASE + expected[1])


@pytest.mark.parametrize(
    ("command", "thing"),
    [
        ({"type": "release", "hold_id": "x1"}, "hold"),
        ({"type": "checkout", "cart_id": "x1"}, "cart"),
        ({"type": "record_payment", "order_id": "x1"}, "order"),
    ],
)
def test_not_owner_reads_exactly_like_unknown(command: dict[str, Any], thing: str) -> None:
    unknown_reason = {"hold": Reason.UNKNOWN_HOLD, "cart": Reason.UNKNOWN_CART}.get(
        thing, Reason.UNKNOWN_ORDER
    )
    foreign = rejection(command, {"reason": "not_owner", "message": "belongs to u2"})
    unknown = rejection(command, {"reason": unknown_reason, "message": "no such thing"})
    assert foreign.body() == unknown.body()
    assert "u2" not in json.dumps(foreign.body())


def test_sold_out_carries_the_product_and_what_was_available() -> None:
    cmd = {"type": "reserve", "product_id": "p1", "quantity": 3}
    problem = rejection(cmd, {"reason": "sold_out", "message": "m", "available": 2})
    assert problem.body()["product_id"] == "p1"
    assert problem.body()["available"] == 2


def test_an_unknown_future_reason_is_still_a_client_error() -> None:
    problem = rejection(RELEASE, {"reason": "brand_new_reason", "message": "m"})
    assert problem.status == 409
    assert problem.body()["reason"] == "brand_new_reason"


async def _client(handler: Any, method: str = "POST", path: str = "/x") -> TestClient[Any, Any]:
    """``handler`` behind the gateway's own front door (problem+json, the 404/405 route)."""
    metrics = GatewayMetrics()
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    front_door.install(app, FrontDoor(metrics, InFlight(InFlightLimits(), metrics)))
    front_door.add_routes(app, [web.route(method, path, handler)])
    front_door.add_fallback(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def _problem(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["status"] == resp.status
    assert body["type"].startswith(PROBLEM_BASE)
    return body


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(await read_json(request))


@pytest.mark.parametrize(
    ("exc", "status", "slug", "retry_after"),
    [
        (NoLeader("electing"), 503, "no-leader", True),
        (CommitUnknown("lost"), 503, "commit-unknown", True),
        (InvalidCommand("bad field", 0), 422, "invalid-input", False),
        (Unreachable("down"), 503, "unavailable", True),
        (TimeoutError(), 503, "unavailable", True),
        (RuntimeError("secret internals"), 500, "internal", False),
    ],
)
async def test_failures_become_problems(
    exc: Exception, status: int, slug: str, retry_after: bool
) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    client = await _client(handler)
    try:
        resp = await client.post("/x")
        body = await _problem(resp)
        assert (resp.status, body["type"]) == (status, PROBLEM_BASE + slug)
        assert ("Retry-After" in resp.headers) == retry_after
        assert "secret internals" not in json.dumps(body)
    finally:
        await client.close()


async def test_commit_unknown_tells_the_client_to_retry_with_the_same_key() -> None:
    async def handler(request: web.Request) -> web.Response:
        raise CommitUnknown("lost")

    client = await _client(handler)
    try:
        body = await _problem(await client.post("/x"))
        assert "same Idempotency-Key" in body["detail"]
    finally:
        await client.close()


async def test_unknown_routes_and_methods_are_problems() -> None:
    client = await _client(_echo)
    try:
        resp = await client.get("/nowhere")
        assert (await _problem(resp))["type"] == PROBLEM_BASE + "not-found"
        resp = await client.get("/x")
        assert resp.status == 405
        assert (await _problem(resp))["type"] == PROBLEM_BASE + "method-not-allowed"
        assert resp.headers["Allow"] == "POST"
    finally:
        await client.close()


async def test_body_size_limit() -> None:
    client = await _client(_echo)
    try:
        fits = {"pad": "x" * (MAX_BODY_BYTES - 20)}
        resp = await client.post("/x", data=json.dumps(fits))
        assert resp.status == 200
        too_big = {"pad": "x" * MAX_BODY_BYTES}
        resp = await client.post("/x", data=json.dumps(too_big))
        assert resp.status == 413
        assert (await _problem(resp))["type"] == PROBLEM_BASE + "body-too-large"
    finally:
        await client.close()


async def test_a_body_streamed_without_length_is_capped_too() -> None:
    async def chunks() -> Any:
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    client = await _client(_echo)
    try:
        resp = await client.post("/x", data=chunks())
        assert resp.status == 413
    finally:
        await client.close()


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[1,", b"\xff\xfe", b'{"a": NaN}', b"[" * 5000 + b"]" * 5000]
)
def test_malformed_json_is_400(raw: bytes) -> None:
    with pytest.raises(Problem) as info:
        decode_json(raw)
    assert info.value.status == 400


def test_a_body_that_is_not_an_object_is_422() -> None:
    with pytest.raises(Problem) as info:
        decode_json(b"[1, 2]")
    assert info.value.status == 422


def test_a_card_number_is_refused_before_any_other_check_and_never_echoed() -> None:
    raw = b'{"user_id": 5, "payment_method": "4111 1111 1111 1111"}'
    with pytest.raises(Problem) as info:
        decode_json(raw)
    assert info.value.slug == "card-number-refused"
    assert "4111" not in json.dumps(info.value.body())


GOOD_RESERVE = {"user_id": "alice", "product_id": "p1", "quantity": 2}


def test_a_good_reserve_body_parses() -> None:
    body = parse_reserve(GOOD_RESERVE)
    assert (body.user_id, body.product_id, body.quantity) == ("alice", "p1", 2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": -1}, "quantity"),
        ({"quantity": 10_001}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"quantity": "1"}, "quantity"),
        ({"product_id": ""}, "product_id"),
        ({"product_id": "a b"}, "product_id"),
        ({"product_id": ".."}, "product_id"),
        ({"product_id": "x" * 129}, "product_id"),
        ({"product_id": 7}, "product_id"),
        ({"user_id": "a:b"}, "user_id"),
        ({"coupon": "FREE"}, "coupon"),
    ],
)
def test_bad_reserve_bodies_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(Problem) as info:
        parse_reserve({**GOOD_RESERVE, **change})
    assert info.value.status == 422
    assert info.value.extensions["field"] == field


def test_missing_fields_are_named() -> None:
    with pytest.raises(Problem) as info:
        parse_reserve({"user_id": "alice"})
    assert "product_id" in info.value.detail and "quantity" in info.value.detail


ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "us"}
GOOD_CHECKOUT = {"user_id": "alice", "cart_id": "c1", "payment_method": "pm_card_visa",
                 "shipping_address": ADDRESS}


def test_a_good_checkout_parses_and_normalises_the_country() -> None:
    body = parse_checkout(GOOD_CHECKOUT)
    assert body.shipping_address["country"] == "US"
    assert body.payment_method == "pm_card_visa"
    assert body.email is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"payment_method": "visa"}, "payment_method"),
        ({"payment_method": "pm_"}, "payment_method"),
        ({"payment_method": "pm_" + "a" * 200}, "payment_method"),
        ({"shipping_address": "1 Main St"}, "shipping_address"),
        ({"shipping_address": {**ADDRESS, "country": "USA"}}, "shipping_address.country"),
        ({"shipping_address": {**ADDRESS, "postal_code": "#1"}}, "shipping_address.postal_code"),
        ({"shipping_address": {**ADDRESS, "city": ""}}, "shipping_address.city"),
        ({"shipping_address": {**ADDRESS, "city": "a\nb"}}, "shipping_address.city"),
        ({"shipping_address": {**ADDRESS, "phone": "1"}}, "shipping_address.phone"),
        ({"email": "not-an-email"}, "email"),
    ],
)
def test_bad_checkout_bodies_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(Problem) as info:
        parse_checkout({**GOOD_CHECKOUT, **change})
    assert info.value.status == 422
    assert info.value.extensions["field"] == field


def test_address_without_required_lines_is_refused() -> None:
    with pytest.raises(Problem) as info:
        parse_address({"city": "x"})
    assert "address_line1" in info.value.detail


async def test_a_body_sent_too_slowly_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "BODY_READ_TIMEOUT_S", 0.2)

    async def trickle() -> Any:
        yield b'{"a": '
        await asyncio.sleep(1.0)
        yield b"1}"

    client = await _client(_echo)
    try:
        resp = await client.post("/x", data=trickle())
        assert resp.status == 408
        assert (await _problem(resp))["type"] == PROBLEM_BASE + "request-timeout"
    finally:
        await client.close()
