"""A node's admission limits (node.admission) on a real one-node cluster in this process:
503 overloaded + Retry-After beyond each limit, recovery, the endpoints that are never
refused, and the real cluster client backing off and retrying on the same node.

A slot is taken either by a real request that stays in flight (a feed long-poll) or by
the test entering the node's own ``Admission`` as a handler does: counts, not timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cluster.client import ClusterClient
from cluster.config import ConfigError, RaftConfig
from cluster.errors import OVERLOADED, Overloaded
from node.admission import Admission, AdmissionLimits, kind_of
from node.api import ADMISSION, make_app
from tests.support.cluster import in_process_config
from tests.test_node_api import PRODUCT, Api, reserve, start_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    limits = {"max_concurrent_submits": 1, "max_concurrent_reads": 1, "max_feed_long_polls": 1}
    async for a in start_api(tmp_path, **limits):
        yield a


def _admission(api: Api) -> Admission:
    app: web.Application = api.client.server.app  # type: ignore[attr-defined]
    return app[ADMISSION]


async def _refused(api: Api, method: str, path: str, **kw: Any) -> bool:
    resp = await api.client.request(method, path, headers=api.headers, **kw)
    body = await resp.json(content_type=None)
    return resp.status == 503 and body["type"] == OVERLOADED and resp.headers["Retry-After"] == "1"


async def test_a_feed_long_poll_over_the_limit_is_refused_and_the_slot_comes_back(
    api: Api,
) -> None:
    await api.post([PRODUCT])
    waiting = asyncio.create_task(api.get("/v1/feed?from=1&wait_ms=20000"))
    async with asyncio.timeout(10):
        while _admission(api).in_flight("feed") != 1:
            await asyncio.sleep(0.01)
    assert await _refused(api, "GET", "/v1/feed?from=1&wait_ms=20000")
    # Status, health and metrics are never refused; other kinds have their own slots.
    assert (await api.get("/v1/status"))[0] == 200
    assert (await api.client.get("/healthz")).status == 200
    assert (await api.get("/v1/products/lamp"))[0] == 200
    await api.post([reserve(1)])  # wakes the long-poll
    status, page = await asyncio.wait_for(waiting, 10)
    assert status == 200 and page["last_index"] == 2
    assert (await api.get("/v1/feed?from=0"))[0] == 200  # recovered
    metrics = await (await api.client.get("/metrics")).text()
    assert 'flashsale_node_admission_refused_total{kind="feed"} 1.0' in metrics


async def test_submits_and_reads_over_their_limits_are_refused_before_any_work(
    api: Api,
) -> None:
    admission = _admission(api)
    assert admission.try_enter("submit")  # as a submit in flight would
    assert await _refused(api, "POST", "/v1/commands", json={"commands": [PRODUCT]})
    admission.leave("submit")
    assert (await api.get("/v1/products/lamp"))[0] == 404  # nothing was applied
    assert (await api.post([PRODUCT]))[0] == 200

    assert admission.try_enter("read")
    assert await _refused(api, "GET", "/v1/products/lamp")
    assert (await api.get("/v1/status"))[0] == 200
    admission.leave("read")
    assert (await api.get("/v1/products/lamp"))[0] == 200


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[ClusterClient, Admission]]:
    """One node serving on its configured port, and a real ClusterClient in front."""
    config = in_process_config(tmp_path, max_concurrent_submits=1, max_concurrent_reads=1)
    app = make_app(config, "n1")
    runner = web.AppRunner(app)
    await runner.setup()
    api = config.node("n1").api
    await web.TCPSite(runner, api.host, api.port).start()
    client = ClusterClient(config, request_timeout_s=5.0)
    try:
        async with asyncio.timeout(20):
            while await client.leader() is None:
                await asyncio.sleep(0.05)
        yield client, app[ADMISSION]
    finally:
        await client.close()
        await runner.cleanup()


async def test_the_cluster_client_backs_off_and_retries_on_an_overloaded_node(
    node: tuple[ClusterClient, Admission],
) -> None:
    client, admission = node
    leader = await client.leader()
    assert admission.try_enter("submit")
    submit = asyncio.create_task(client.submit([PRODUCT], deadline_s=20.0))
    async with asyncio.timeout(15):
        while admission.refused("submit") < 2:  # refused, and asked again
            await asyncio.sleep(0.01)
    assert not submit.done()
    admission.leave("submit")
    result = await asyncio.wait_for(submit, 15)
    assert result.results[0]["ok"] is True
    assert await client.leader() == leader  # an overload is not a leader change


async def test_an_overload_that_outlasts_the_deadline_is_reported_as_overloaded(
    node: tuple[ClusterClient, Admission],
) -> None:
    client, admission = node
    assert admission.try_enter("submit")
    with pytest.raises(Overloaded):  # not CommitUnknown: nothing can have been applied
        await client.submit([PRODUCT], deadline_s=0.5)
    admission.leave("submit")
    assert admission.try_enter("read")
    with pytest.raises(Overloaded):
        await client.get("/v1/products", leader_only=True)
    admission.leave("read")
    assert (await client.get("/v1/products"))["products"] == []


def test_kinds_and_limits() -> None:
    assert kind_of("POST", "/v1/commands") == "submit"
    assert kind_of("GET", "/v1/feed") == "feed"
    assert kind_of("GET", "/v1/carts/c1") == "read"
    assert kind_of("GET", "/v1/orders") == "read"  # several orders at once
    for method, path in [("GET", "/v1/status"), ("GET", "/healthz"), ("GET", "/metrics"),
                         ("POST", "/v1/membership")]:
        assert kind_of(method, path) is None
    assert AdmissionLimits.from_config(RaftConfig()) == AdmissionLimits(128, 256, 256)
    with pytest.raises(ValueError):
        AdmissionLimits(submits=0)


def test_the_limits_are_configurable_and_validated(tmp_path: Path) -> None:
    config = in_process_config(tmp_path, max_concurrent_submits=7, max_feed_long_polls=3)
    assert (config.raft.max_concurrent_submits, config.raft.max_feed_long_polls) == (7, 3)
    with pytest.raises(ConfigError, match=r"raft\.max_concurrent_reads=0"):
        in_process_config(tmp_path, max_concurrent_reads=0)
