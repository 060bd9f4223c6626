"""The front door (gateway/front_door.py): every request, matched or not, is counted,
answered as problem+json on error, capped and guarded, without any aiohttp middleware."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import front_door
from gateway.front_door import FrontDoor, Handler
from gateway.metrics import GatewayMetrics
from gateway.overload import InFlight, InFlightLimits
from gateway.problems import PROBLEM_BASE, Problem
from gateway.server import create_app
from tests.test_gateway_api import InProcessCluster, _config


def _door() -> tuple[FrontDoor, GatewayMetrics]:
    metrics = GatewayMetrics()
    limits = InFlightLimits(max_requests=4, max_writes=1, max_payments=1)
    return FrontDoor(metrics, InFlight(limits, metrics)), metrics


async def _start(app: web.Application) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    config = _config(tmp_path)
    client = await _start(create_app(config, "g1", cluster=InProcessCluster(config)))
    try:
        yield client
    finally:
        await client.close()


async def test_the_gateway_application_has_no_aiohttp_middleware(
    gateway: TestClient[Any, Any],
) -> None:
    # The point of the front door: no per-request middleware chain (docs/BENCHMARKS.md).
    assert gateway.app is not None and list(gateway.app.middlewares) == []
    resp = await gateway.get("/healthz")
    assert resp.status == 200


async def test_unmatched_requests_are_problems_counted_apart(
    gateway: TestClient[Any, Any],
) -> None:
    resp = await gateway.get("/nowhere/at/all")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert (await resp.json(content_type=None))["type"] == PROBLEM_BASE + "not-found"

    for method, path, allow in [
        ("GET", "/reserve-inventory", "POST"),
        ("DELETE", "/inventory/p1", "GET"),
        ("POST", "/", "GET"),
        ("PUT", "/cart/c1/items/h1", "DELETE"),
    ]:
        resp = await gateway.request(method, path)
        body = await resp.json(content_type=None)
        assert (resp.status, body["type"]) == (405, PROBLEM_BASE + "method-not-allowed"), path
        assert resp.headers["Allow"] == allow, path

    text = await (await gateway.get("/metrics")).text()
    # One label for every unmatched path: a scan of random paths cannot grow the series.
    assert 'route="unmatched",status="404"' in text
    assert 'method="DELETE",route="unmatched",status="405"' in text
    assert "/nowhere" not in text


async def test_guards_run_in_order_inside_the_door_on_every_route() -> None:
    door, metrics = _door()
    app = web.Application()
    front_door.install(app, door)
    seen: list[str] = []

    async def hello(request: web.Request) -> web.StreamResponse:
        seen.append("handler")
        return web.json_response({"ok": True})

    def guard(name: str) -> front_door.Guard:
        async def run(request: web.Request, handler: Handler) -> web.StreamResponse:
            seen.append(name)
            if request.headers.get("X-Refuse") == name:
                raise Problem(403, "blocked", "Blocked", f"refused by {name}")
            return await handler(request)

        return run

    front_door.add_guard(app, guard("first"))
    front_door.add_routes(app, [web.get("/hello", hello, allow_head=False)])
    front_door.add_guard(app, guard("second"))  # added after the route: still applies
    front_door.add_fallback(app)
    with pytest.raises(RuntimeError):
        front_door.add_routes(app, [web.get("/late", hello)])  # would sit behind the fallback
    client = await _start(app)
    try:
        assert (await client.get("/hello")).status == 200
        assert seen == ["first", "second", "handler"]
        seen.clear()
        resp = await client.get("/hello", headers={"X-Refuse": "first"})
        assert resp.status == 403 and resp.content_type == "application/problem+json"
        assert seen == ["first"]
        seen.clear()
        # Unmatched requests pass the guards too: a blocked client is blocked everywhere.
        resp = await client.get("/elsewhere", headers={"X-Refuse": "second"})
        assert resp.status == 403
        assert seen == ["first", "second"]
        with pytest.raises(RuntimeError):
            door.add_guard(guard("too-late"))  # the entries were sealed at startup
    finally:
        await client.close()
    assert metrics.requests.counts == {
        ("/hello", "GET", 200): 1,
        ("/hello", "GET", 403): 1,
        ("unmatched", "GET", 403): 1,
    }


async def test_a_counted_route_over_its_cap_is_refused_before_its_handler() -> None:
    door, metrics = _door()
    app = web.Application()
    front_door.install(app, door)
    release = asyncio.Event()
    entered = 0

    async def slow_write(request: web.Request) -> web.StreamResponse:
        nonlocal entered
        entered += 1
        await release.wait()
        return web.json_response({"ok": True})

    front_door.add_routes(app, [web.post("/add-to-cart", slow_write)])
    front_door.add_fallback(app)
    client = await _start(app)
    try:
        first = asyncio.ensure_future(client.post("/add-to-cart"))
        while entered == 0:
            await asyncio.sleep(0.005)
        refused = await client.post("/add-to-cart")  # max_writes = 1
        assert refused.status == 503
        assert "Retry-After" in refused.headers
        assert entered == 1
        release.set()
        assert (await first).status == 200
    finally:
        await client.close()
    assert metrics.requests.counts[("/add-to-cart", "POST", 503)] == 1


def test_an_application_without_its_fallback_does_not_start() -> None:
    door, _ = _door()
    with pytest.raises(RuntimeError, match="fallback"):
        door.seal()
