"""The gateway's fast paths keep their meaning: answers encoded once per ledger index,
metrics counted in plain numbers, the token's decoded claims kept, the card scan's
shortcut, hold bodies remembered by their bytes (docs/BENCHMARKS.md measures their
speed; this file only what users rely on)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.bodies import MAX_CACHED_BODY_BYTES, reserve_body
from gateway.cards import contains_card_number
from gateway.edge_cache import EdgeCache
from gateway.identity import InvalidToken, issue_token, verify_token
from gateway.metrics import GatewayMetrics, RequestStats
from gateway.overload import InFlight, InFlightLimits
from gateway.problems import Problem
from tests.test_gateway_api import Shop, _shop

SECRET = "s" * 32
NOW = 1_700_000_000.0


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    async for s in _shop(tmp_path):
        yield s


def _product(available: int) -> dict[str, Any]:
    return {"product_id": "p1", "name": "P", "price_minor": 100, "total_stock": 5,
            "available": available, "reserved": 5 - available, "sold": 0}  # fmt: skip


def _encode(product: Mapping[str, Any], index: int) -> bytes:
    return f"{product['available']}@{index}".encode()


# -- answers encoded once per ledger index --------------------------------------------


def test_an_encoded_answer_is_rebuilt_when_the_cache_changes() -> None:
    cache = EdgeCache()
    cache.reset({"index": 7, "products": [_product(5)]})
    assert cache.encoded("p1", "inventory", _encode) == b"5@7"
    assert cache.encoded("nope", "inventory", _encode) is None
    # A newer entry (even one that touched nothing here) changes the index in the body.
    cache.advance(8)
    assert cache.encoded("p1", "inventory", _encode) == b"5@8"
    cache.apply({"index": 9, "seq": 0, "kind": "hold_placed", "key": "k",
                 "stock": [{"product_id": "p1", "available": 4, "reserved": 1}]})  # fmt: skip
    assert cache.encoded("p1", "inventory", _encode) == b"4@9"
    # Terms read from a node change a product without a new index.
    cache.set_details(dict(_product(4), available=3))
    assert cache.encoded("p1", "inventory", lambda p, i: p["name"].encode()) == b"P"
    cache.set_details(dict(_product(4), name="Q"))
    assert cache.encoded("p1", "inventory", lambda p, i: p["name"].encode()) == b"Q"


async def test_inventory_reads_follow_every_change_of_stock(shop: Shop) -> None:
    shop.create("p1", 3)
    await shop.synced()
    first = await shop.client.get("/inventory/p1")
    assert (await first.json())["available_quantity"] == 3
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["X-Cache"] == "hit"
    assert (await shop.reserve("alice", "p1", 2))[0] == 200
    await shop.synced()
    again = await shop.client.get("/inventory/p1")
    body = await again.json()
    assert body["available_quantity"] == 1 and body["reserved_quantity"] == 2
    assert body["ledger_index"] == int(again.headers["X-Ledger-Index"]) == shop.state.cache.index


async def test_each_sold_out_refusal_names_its_own_key_and_path(shop: Shop) -> None:
    shop.create("p1", 1)
    assert (await shop.reserve("alice", "p1"))[0] == 200
    await shop.synced()
    answers = [await shop.reserve("bob", "p1", key=f"k{n}", path=path)
               for n, path in enumerate(["/add-to-cart", "/add-to-cart",
                                         "/reserve-inventory"])]  # fmt: skip
    for n, (status, body, headers) in enumerate(answers):
        assert status == 409 and body["source"] == "edge-cache"
        assert headers["Idempotency-Key"] == f"k{n}"
        assert headers["Content-Type"] == "application/problem+json"
    assert answers[0][1] == answers[1][1]
    assert answers[0][1]["instance"] == "/add-to-cart"
    assert answers[2][1]["instance"] == "/reserve-inventory"
    # Still authenticated and validated before the cache answers.
    resp = await shop.client.post("/add-to-cart", json={"user_id": "bob", "product_id": "p1",
                                                        "quantity": 1})  # fmt: skip
    assert resp.status == 401
    status, body, _ = await shop.reserve("bob", "p1", 0)
    assert status == 422 and body["field"] == "quantity"
    resp = await shop.client.post(
        "/add-to-cart", headers=shop.auth("bob"),
        json={"user_id": "bob", "product_id": "p1", "quantity": 1, "card": "4242424242424242"},
    )  # fmt: skip
    assert resp.status == 422
    assert (await resp.json())["type"].endswith("card-number-refused")


def test_a_hold_body_is_remembered_by_its_bytes_only_once_it_proved_valid() -> None:
    raw = b'{"user_id":"bob","product_id":"p1","quantity":2}'
    first = reserve_body(raw)
    assert (first.user_id, first.product_id, first.quantity) == ("bob", "p1", 2)
    assert reserve_body(bytes(raw)) is first  # the same bytes: the record kept
    bad = b'{"user_id":"bob","product_id":"p1","quantity":0}'
    for _ in range(2):  # refused every time: a failure is never kept
        with pytest.raises(Problem) as refused:
            reserve_body(bad)
        assert refused.value.status == 422
    big = b'{"user_id":"bob",' + b" " * MAX_CACHED_BODY_BYTES + b'"product_id":"p1","quantity":1}'
    assert reserve_body(big) is not reserve_body(big)  # beyond the size kept: parsed anew


async def test_a_remembered_body_still_needs_its_own_shoppers_token(shop: Shop) -> None:
    shop.create("p1", 1)
    assert (await shop.reserve("alice", "p1"))[0] == 200
    await shop.synced()
    body = {"user_id": "bob", "product_id": "p1", "quantity": 1}
    resp = await shop.client.post("/add-to-cart", json=body, headers=shop.auth("bob"))
    assert resp.status == 409
    resp = await shop.client.post("/add-to-cart", json=body, headers=shop.auth("carol"))
    assert resp.status == 403  # the same bytes, another shopper's token


# -- metrics in plain numbers -----------------------------------------------------------


def test_request_metrics_expose_what_a_prometheus_histogram_would() -> None:
    stats = RequestStats()
    registry = CollectorRegistry()
    registry.register(stats)
    reference = CollectorRegistry()
    histogram = Histogram("flashsale_gateway_request_duration_seconds",
                          "Time to answer a request, by route", ["route"],
                          buckets=stats.buckets, registry=reference)  # fmt: skip
    for seconds in (0.0005, 0.001, 0.003, 0.01, 2.0, 20.0):
        stats.observe("/inventory/{product_id}", "GET", 200, seconds)
        histogram.labels("/inventory/{product_id}").observe(seconds)
    stats.observe("/checkout", "POST", 409, 0.02)
    text = generate_latest(registry).decode()
    wanted = [line for line in generate_latest(reference).decode().splitlines()
              if line.startswith("flashsale_gateway_request_duration_seconds_")
              and "_created" not in line]  # fmt: skip
    for line in wanted:
        assert line in text
    assert ('flashsale_gateway_requests_total{method="GET",route="/inventory/{product_id}",'
            'status="200"} 6.0') in text  # fmt: skip
    assert (
        'flashsale_gateway_requests_total{method="POST",route="/checkout",status="409"} 1.0' in text
    )


def test_in_flight_requests_are_read_at_scrape_time() -> None:
    metrics = GatewayMetrics()
    in_flight = InFlight(InFlightLimits(8, 4), metrics)
    assert in_flight.try_enter("read") and in_flight.try_enter("write")
    assert in_flight.try_enter("write")
    text = _scrape(metrics)
    assert 'flashsale_gateway_in_flight_requests{kind="write"} 2.0' in text
    assert 'flashsale_gateway_in_flight_requests{kind="read"} 1.0' in text
    in_flight.leave("write")
    assert 'flashsale_gateway_in_flight_requests{kind="write"} 1.0' in _scrape(metrics)


def _scrape(metrics: GatewayMetrics) -> str:
    body = metrics.response().body
    assert isinstance(body, bytes)
    return body.decode()


# -- the token's claims kept, its signature and expiry checked every time ---------------


def test_a_known_payload_with_a_forged_signature_is_still_refused() -> None:
    token = issue_token(SECRET, "alice", 60, now_s=NOW)
    assert verify_token(SECRET, token, now_s=NOW) == "alice"  # claims now kept
    version, payload, signature = token.split(".")
    forged = f"{version}.{payload}.{'A' * len(signature)}"
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(SECRET, forged, now_s=NOW)
    with pytest.raises(InvalidToken, match="signature"):
        verify_token("t" * 32, token, now_s=NOW)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, now_s=NOW + 61)


# -- the card scan's shortcut -----------------------------------------------------------


def test_the_shortest_card_numbers_are_still_found() -> None:
    # 4222222222222: a 13-digit Visa test number, as short as a card number gets.
    assert contains_card_number({"product_id": "4222222222222"})
    assert contains_card_number({"quantity": 4222222222222})
    assert contains_card_number({"4222222222222": 1})
    assert not contains_card_number({"product_id": "422222222222", "quantity": 1})
