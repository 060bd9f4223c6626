"""The gateway process: one aiohttp application per process, built by ``create_app``.

``create_app`` wires the pieces (cluster client, batcher, edge cache and its feed
follower, metrics) into one ``web.Application``; cleanup contexts start and stop the
background tasks. ``main`` runs it on uvloop at the gateway's listen address and shuts
down cleanly on SIGTERM: stop accepting, let in-flight requests finish, fail what is
still queued, stop the follower, close the cluster client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import uvloop
from aiohttp import web

from cluster.client import ClusterClient
from cluster.config import ClusterConfig
from cluster.heap import kept_heap
from cluster.logs import setup_logging
from gateway.admission import add_admission
from gateway.api import add_routes
from gateway.batcher import Batcher, BatchPolicy
from gateway.bodies import MAX_BODY_BYTES
from gateway.bots_api import add_bots_api
from gateway.cluster_port import ClusterPort
from gateway.defences import add_defences
from gateway.edge_cache import FEED_TIMEOUT_MARGIN_S, EdgeCache, FeedFetch, FeedFollower
from gateway.forwarded import ForwardedGuard
from gateway.front_door import FrontDoor, add_fallback, add_guard
from gateway.front_door import install as install_front_door
from gateway.metrics import GatewayMetrics
from gateway.overload import InFlight, InFlightLimits, LoopLag
from gateway.payment import add_payments
from gateway.shop import add_shop
from gateway.state import STATE, GatewayState
from gateway.subscriptions import add_subscriptions
from gateway.tls import server_context
from pii.gateway import sealer_context

log = logging.getLogger("gateway.server")

SHUTDOWN_TIMEOUT_S = 15.0  # in-flight requests get this long after SIGTERM
# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn). aiohttp's
# default of 128 overflowed in the overload benchmark: clients saw connection resets
# instead of a 503 with Retry-After.
LISTEN_BACKLOG = 1024
# One HTTP attempt to a node waits for the node's own commit timeout plus this margin, so
# the node can say "commit unknown" itself before the gateway gives up on the attempt.
CLUSTER_REQUEST_MARGIN_S = 1.0


def _feed_fetch(cluster: ClusterPort) -> FeedFetch:
    async def fetch(from_index: int, limit: int, wait_ms: int) -> Mapping[str, Any]:
        return await cluster.get(
            "/v1/feed",
            prefer_leader=False,
            params={"from": from_index, "limit": limit, "wait_ms": wait_ms},
            timeout_s=wait_ms / 1000 + FEED_TIMEOUT_MARGIN_S,
        )

    return fetch


def create_app(
    config: ClusterConfig,
    gateway_id: str,
    *,
    cluster: ClusterPort | None = None,
    feed_fetch: FeedFetch | None = None,
) -> web.Application:
    """The gateway application for ``gateway_id`` of ``config``.

    ``cluster`` and ``feed_fetch`` replace the real cluster client and feed requests
    (tests hand in an in-process ledger); by default both go to the config's nodes.
    """
    config.gateway(gateway_id)  # ConfigError now rather than at the first request
    settings = config.gateway_settings
    metrics = GatewayMetrics()
    port: ClusterPort = cluster or ClusterClient(
        config,
        request_timeout_s=config.raft.commit_timeout_ms / 1000 + CLUSTER_REQUEST_MARGIN_S,
    )
    cache = EdgeCache()

    async def fetch_product(product_id: str) -> Mapping[str, Any]:
        return await port.get(f"/v1/products/{quote(product_id, safe='')}", prefer_leader=False)

    follower = FeedFollower(
        cache,
        feed_fetch or _feed_fetch(port),
        wait_ms=settings.feed_wait_ms,
        fetch_product=fetch_product,
        metrics=metrics,
    )
    policy = BatchPolicy(
        window_ms=settings.batch_window_ms,
        max_batch=settings.max_batch,
        max_in_flight=settings.max_in_flight_batches,
        queue_limit=settings.queue_limit,
    )
    state = GatewayState(
        config=config,
        gateway_id=gateway_id,
        settings=settings,
        cluster=port,
        batcher=Batcher(port.submit, policy, metrics),
        cache=cache,
        follower=follower,
        metrics=metrics,
    )
    # How long requests wait for the event loop, which no handler timer sees; the write
    # cap counts it (gateway.overload).
    lag = LoopLag(settings.loop_lag_tick_ms / 1000, metrics) if settings.loop_lag_tick_ms else None
    in_flight = InFlight(
        InFlightLimits.from_settings(settings),
        metrics,
        write_latency_target_ms=settings.write_latency_target_ms,
        lag=lag,
    )
    # No aiohttp middleware: metrics, problem+json, overload shedding and the bot guards
    # wrap each route's handler (gateway/front_door.py says why).
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = state
    install_front_door(app, FrontDoor(metrics, in_flight))
    if settings.trusted_proxies:
        # First of the guards: every one after it sees the shopper's own address.
        add_guard(app, ForwardedGuard(settings.trusted_proxies))
    # Lists, rate limits and heuristics (only with [bots] enabled): the next guard,
    # before add_admission's.
    add_defences(app, state)
    add_bots_api(app)
    add_routes(app)
    # Personal data is sealed before it leaves the gateway: no sealer, no checkout.
    app.cleanup_ctx.append(sealer_context(config))
    app.cleanup_ctx.append(_cluster_client)
    app.cleanup_ctx.append(_feed_follower)
    app.cleanup_ctx.append(_batcher)
    if lag is not None:
        app.cleanup_ctx.append(lag.context)
    add_payments(app, state)  # after the batcher: its reconciler stops before the batcher
    add_shop(app, state)
    add_subscriptions(app, state)
    # Last: it shares gateway.defences' state, and its guard runs after defences'.
    add_admission(app, state)
    add_fallback(app)  # 404 and 405 through the front door too: after every route
    return app


async def _cluster_client(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[STATE].cluster.close()


async def _heap_keeper(app: web.Application) -> AsyncIterator[None]:
    # The edge cache, the tokens and bodies remembered and the open connections are
    # long-lived: kept out of the collector's full passes (cluster/heap.py).
    async with kept_heap(app[STATE].metrics.gc_pause_seconds):
        yield


async def _feed_follower(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(app[STATE].follower.run(), name="feed")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _batcher(app: web.Application) -> AsyncIterator[None]:
    batcher = app[STATE].batcher
    batcher.start()
    yield
    await batcher.close()


def main(config: ClusterConfig, gateway_id: str) -> None:
    """Run gateway ``gateway_id`` until SIGTERM/SIGINT."""
    setup_logging(f"gateway-{gateway_id}")
    listen = config.gateway(gateway_id).listen
    ssl_context = server_context(config.gateway_settings, listen)
    app = create_app(config, gateway_id)
    app.cleanup_ctx.append(_heap_keeper)  # this process's heap: see cluster/heap.py
    loop = uvloop.new_event_loop()
    log.info(
        "gateway starting",
        extra={
            "gateway": gateway_id,
            "listen": str(listen),
            "scheme": "https" if ssl_context else "http",
            "loop": type(loop).__module__,
        },
    )
    web.run_app(
        app,
        host=listen.host,
        port=listen.port,
        loop=loop,
        ssl_context=ssl_context,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        backlog=LISTEN_BACKLOG,
        print=None,
        access_log=None,
        handle_signals=True,
    )
    log.info("gateway stopped", extra={"gateway": gateway_id})
