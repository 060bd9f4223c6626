"""The gateway's internal bots API (gateway.bots_api): the console's view and controls,
per process without Redis, shared through the real Redis with it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bots.policy_store import REFRESH_S
from gateway.defences import BOTS
from gateway.problems import PROBLEM_BASE
from gateway.state import STATE
from tests.support.bots import (
    REDIS_URL,
    Gateway,
    close_gateways,
    cluster_name,
    internal,
    shopper,
    start_gateway,
)
from tests.support.cluster import free_ports

REDIS_SERVER = "/usr/bin/redis-server"
SHARED_WITHIN_S = REFRESH_S * 3  # a change through one gateway reaches the others by then


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    await close_gateways(started)


_start = start_gateway


async def _doc(gw: Gateway) -> dict[str, Any]:
    resp = await gw.client.get("/internal/bots", headers=internal())
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return body


async def _put(gw: Gateway, body: Any) -> tuple[int, dict[str, Any]]:
    resp = await gw.client.put("/internal/bots/settings", json=body, headers=internal())
    return resp.status, await resp.json(content_type=None)


async def _list(gw: Gateway, name: str, op: str, value: Any) -> tuple[int, dict[str, Any]]:
    resp = await gw.client.post(
        "/internal/bots/lists", json={"list": name, "op": op, "value": value}, headers=internal()
    )
    return resp.status, await resp.json(content_type=None)


async def test_every_route_needs_the_internal_token(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path)
    for headers in ({}, {"Authorization": "Bearer nope"}, shopper("alice")):
        for method, path in (("GET", "/internal/bots"), ("PUT", "/internal/bots/settings"),
                             ("POST", "/internal/bots/lists")):  # fmt: skip
            resp = await gw.client.request(method, path, json={}, headers=headers)
            assert resp.status == 401, (method, path, headers)
            body = await resp.json(content_type=None)
            assert body["type"] == PROBLEM_BASE + "unauthorized"
    assert gw.app[BOTS].policy.block_score == 100


async def test_the_document_shows_defences_settings_lists_counts_queue_and_redis(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path, ip_rate=0.01, ip_burst=2)
    for _ in range(3):
        await gw.client.get("/products")
    doc = await _doc(gw)
    assert doc["enabled"] is True
    assert doc["defences"] == {"rate_limits": True, "challenge": False, "heuristics": True,
                               "waiting_room": False}  # fmt: skip
    assert doc["settings"] == {"challenge_difficulty": 50_000, "admission_rate": 50.0,
                               "block_score": 100}  # fmt: skip
    assert doc["lists"] == {"block_ips": [], "allow_ips": [], "block_shoppers": [],
                            "allow_shoppers": []}  # fmt: skip
    counts = doc["counts"]
    assert counts["limited"] == 1 and counts["blocked"] == 0 and counts["allowed"] >= 2
    assert counts["by_reason"]["allowed/passed"] == 2
    assert counts["by_reason"]["limited/ip-rate"] == 1
    assert set(counts) == {"allowed", "limited", "challenged", "blocked", "queued", "by_reason"}
    assert set(doc["queue"]) == {"issued", "admitted", "waiting", "opens_at", "admission_rate"}
    assert doc["redis"] == {"configured": False, "ok": False}


async def test_settings_are_validated_and_take_effect_on_the_next_request(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = await _start(gateways, tmp_path)
    curl = {"User-Agent": "curl/8.5.0"}  # scores 60
    assert (await gw.client.get("/products", headers=curl)).status == 200
    for bad in ({"block_score": 0}, {"block_score": "high"}, {"challenge_difficulty": 10},
                {"admission_rate": 1e9}, {"nonsense": 1}, [1, 2]):  # fmt: skip
        status, body = await _put(gw, bad)
        assert status == 400, bad
        assert body["type"] == PROBLEM_BASE + "invalid-bot-settings"
    resp = await gw.client.put(
        "/internal/bots/settings", data=b"{not json", headers=internal()
    )
    assert resp.status == 400
    assert gw.app[BOTS].policy.block_score == 100  # nothing half-applied
    status, doc = await _put(gw, {"block_score": 60, "challenge_difficulty": 200_000,
                                  "admission_rate": 12.5})  # fmt: skip
    assert status == 200
    assert doc["settings"] == {"challenge_difficulty": 200_000, "admission_rate": 12.5,
                               "block_score": 60}  # fmt: skip
    refused = await gw.client.get("/products", headers=curl)
    assert refused.status == 403
    assert (await refused.json(content_type=None))["reasons"] == ["scripted-ua"]
    assert (await gw.client.get("/products")).status == 200  # a browser still shops


async def test_lists_through_the_api(gateways: list[Gateway], tmp_path: Path) -> None:
    gw = await _start(gateways, tmp_path, max_list_entries=2)
    status, doc = await _list(gw, "block_ips", "add", "127.0.0.1/8")
    assert status == 200 and doc["lists"]["block_ips"] == ["127.0.0.0/8"]
    assert (await gw.client.get("/products")).status == 403
    status, doc = await _list(gw, "block_ips", "add", "127.0.0.0/8")  # twice: fine
    assert status == 200 and doc["lists"]["block_ips"] == ["127.0.0.0/8"]
    status, doc = await _list(gw, "block_ips", "remove", "127.0.0.0/8")
    assert status == 200 and doc["lists"]["block_ips"] == []
    assert (await gw.client.get("/products")).status == 200
    for bad in (("grey_ips", "add", "10.0.0.1"), ("block_ips", "toggle", "10.0.0.1"),
                ("block_ips", "add", "10.0.0.256"), ("block_shoppers", "add", "no spaces"),
                ("block_ips", "add", 42)):  # fmt: skip
        status, body = await _list(gw, *bad)
        assert status == 400, bad
        assert body["type"] == PROBLEM_BASE + "invalid-bot-settings"
    assert (await _list(gw, "block_shoppers", "add", "m1"))[0] == 200
    assert (await _list(gw, "block_shoppers", "add", "m2"))[0] == 200
    status, body = await _list(gw, "block_shoppers", "add", "m3")
    assert status == 400 and "maximum" in body["detail"]
    assert (await _doc(gw))["lists"]["block_shoppers"] == ["m1", "m2"]


async def test_with_redis_every_gateway_and_a_restarted_one_see_the_same_policy(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    name = cluster_name()
    a = await _start(gateways, tmp_path, name, redis_url=REDIS_URL, max_list_entries=2)
    b = await _start(gateways, tmp_path, name, redis_url=REDIS_URL, max_list_entries=2)
    assert (await _put(a, {"block_score": 77}))[0] == 200
    assert (await _list(a, "block_shoppers", "add", "mallory"))[0] == 200
    assert (await _list(b, "allow_ips", "add", "192.0.2.0/24"))[0] == 200
    async with asyncio.timeout(SHARED_WITHIN_S):
        while True:
            docs = [await _doc(gw) for gw in (a, b)]
            if all(d["settings"]["block_score"] == 77
                   and d["lists"]["block_shoppers"] == ["mallory"]
                   and d["lists"]["allow_ips"] == ["192.0.2.0/24"] for d in docs):  # fmt: skip
                break
            await asyncio.sleep(0.1)
    assert all(d["redis"] == {"configured": True, "ok": True} for d in docs)
    # The cap holds across gateways, checked in Redis: b cannot add a third entry even
    # before it has seen a's two.
    assert (await _list(a, "block_ips", "add", "10.0.0.1"))[0] == 200
    assert (await _list(a, "block_ips", "add", "10.0.0.2"))[0] == 200
    assert (await _list(b, "block_ips", "add", "10.0.0.3"))[0] == 400
    assert "10.0.0.3" not in (await _doc(b))["lists"]["block_ips"]
    # A gateway started later loads everything when it starts.
    c = await _start(gateways, tmp_path, name, redis_url=REDIS_URL, max_list_entries=2)
    doc = await _doc(c)
    assert doc["settings"]["block_score"] == 77
    assert doc["lists"]["block_shoppers"] == ["mallory"]
    assert sorted(doc["lists"]["block_ips"]) == ["10.0.0.1", "10.0.0.2"]
    # And enforces it: mallory is blocked on c without anyone telling c.
    c.create("tee", 5)
    resp = await c.client.post(
        "/add-to-cart", json={"user_id": "mallory", "product_id": "tee", "quantity": 1},
        headers=shopper("mallory"),
    )
    assert resp.status == 403


async def test_without_redis_changes_are_per_process(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    a = await _start(gateways, tmp_path)
    b = await _start(gateways, tmp_path, a.app[STATE].config.name)
    assert (await _put(a, {"block_score": 5}))[0] == 200
    await asyncio.sleep(REFRESH_S * 1.5)
    assert (await _doc(b))["settings"]["block_score"] == 100


# -- a Redis that goes away and comes back -------------------------------------------------


class OwnRedis:
    """A redis-server of this test's own on a free port, stopped and started by pid."""

    def __init__(self, directory: Path) -> None:
        (self.port,) = free_ports(1)
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("no redis-server binary")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_redis_outage_falls_back_locally_and_nothing_set_meanwhile_is_lost(
    gateways: list[Gateway], tmp_path: Path, own_redis: OwnRedis
) -> None:
    name = cluster_name()
    a = await _start(gateways, tmp_path, name, redis_url=own_redis.url, ip_rate=0.01,
                     ip_burst=3)  # fmt: skip
    assert (await a.client.get("/products")).status == 200
    assert (await _doc(a))["redis"] == {"configured": True, "ok": True}
    own_redis.stop()
    # Limits hold locally (a fresh local bucket: 3, then refused), and the gateway says so.
    statuses = [(await a.client.get("/products")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert (await _doc(a))["redis"]["ok"] is False
    # An operator acts during the outage: it applies here at once.
    assert (await _put(a, {"block_score": 42}))[0] == 200
    assert (await _list(a, "block_shoppers", "add", "mallory"))[0] == 200
    own_redis.start()  # back, empty (no persistence)
    async with asyncio.timeout(SHARED_WITHIN_S + 2):
        while not (await _doc(a))["redis"]["ok"]:
            await a.client.get("/products")  # the limiter learns on a request
            await asyncio.sleep(0.2)
    # What was set during the outage was written back: a gateway starting now sees it.
    b = await _start(gateways, tmp_path, name, redis_url=own_redis.url)
    doc = await _doc(b)
    assert doc["settings"]["block_score"] == 42
    assert doc["lists"]["block_shoppers"] == ["mallory"]
    metrics = await (await a.client.get("/metrics")).text()
    assert "flashsale_gateway_bot_redis_fallback 0.0" in metrics


async def test_a_body_arriving_in_pieces_is_read_whole(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    """An operator's change sent in several TCP segments (chunked here) is one body."""
    gw = await _start(gateways, tmp_path)

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"block_score":'
        await asyncio.sleep(0.05)
        yield b" 42}"

    resp = await gw.client.put("/internal/bots/settings", data=pieces(), headers=internal())
    assert resp.status == 200, await resp.text()
    assert gw.app[BOTS].policy.block_score == 42
