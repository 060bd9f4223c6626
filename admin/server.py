"""The operators' console process: ``flashsale admin`` runs ``main(config)``.

Theory of operation: ``create_app`` builds the one ``web.Application`` of the process.
Cleanup contexts open the console database (admin.db under the cluster's data_dir), the
HTTP session, the cluster client, and start four background tasks: the live hub (polls
the cluster each second and pushes to open pages), the bots hub (polls the gateways' bot
defences each second, re-applies operators' settings to a gateway that lost them, pushes
to the Bots and queue page), the feed follower (orders per second, orders per shopper)
and housekeeping (deletes ended sessions). Middlewares refuse
anything without a session (admin.security). ``main`` serves it on ``[admin] listen``
with uvloop until SIGTERM or SIGINT, then ends the live streams, lets requests in flight
finish and closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from admin.app_keys import (
    BOTS,
    CLOCK_MS,
    CLUSTER,
    CONFIG,
    FEED,
    HTTP,
    HUB,
    LIMITER,
    METRICS,
    STORE,
)
from admin.audit_views import audit_page
from admin.bots_hub import BotsHub
from admin.bots_views import bots_api, bots_page, bots_stream, change_list, change_settings
from admin.cluster_port import ClusterPort
from admin.cluster_views import change_members, cluster_api, cluster_page, live_stream
from admin.feed import FeedFollower
from admin.limits import MAX_FORM_BYTES
from admin.live import LiveHub
from admin.login_limit import LoginLimiter
from admin.login_views import login_form, login_submit, logout
from admin.metrics import ConsoleMetrics
from admin.order_views import orders_page, unseal_order
from admin.sale_views import (
    close_sale,
    create_product,
    edit_product,
    open_sale,
    product_page,
    restock,
    sale_page,
)
from admin.security import auth_middleware, errors_middleware, harden_headers, see_other
from admin.sessions import purge_expired
from admin.store import admin_db_path, open_store
from cluster.client import ClusterClient
from cluster.config import ClusterConfig
from cluster.logs import setup_logging

log = logging.getLogger("admin.server")

STATIC_DIR = Path(__file__).parent / "static"
HOUSEKEEPING_PERIOD_S = 600.0  # ended sessions are deleted this often
SHUTDOWN_TIMEOUT_S = 10.0  # requests in flight get this long after SIGTERM


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


async def root(request: web.Request) -> web.StreamResponse:
    return see_other("/cluster")


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _housekeeping(app: web.Application) -> None:
    while True:
        removed = purge_expired(app[STORE], now_ms=app[CLOCK_MS]())
        if removed:
            log.info("ended sessions deleted", extra={"count": removed})
        await asyncio.sleep(HOUSEKEEPING_PERIOD_S)


def create_app(
    config: ClusterConfig,
    *,
    cluster: ClusterPort | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
    db_path: Path | None = None,
) -> web.Application:
    """The console application. ``cluster`` and ``clock_ms`` replace the real cluster
    client and clock (tests); ``db_path`` the database location (default data_dir)."""
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_FORM_BYTES
    )
    app[CONFIG] = config
    app[CLOCK_MS] = clock_ms
    app[LIMITER] = LoginLimiter()
    app[METRICS] = ConsoleMetrics()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = open_store(db_path or admin_db_path(config.data_dir))
        app[HTTP] = aiohttp.ClientSession()
        own_client = cluster is None
        app[CLUSTER] = cluster if cluster is not None else ClusterClient(config, app[HTTP])
        app[FEED] = FeedFollower(app[CLUSTER])
        app[HUB] = LiveHub(config, app[CLUSTER], app[HTTP], app[FEED], clock_ms)
        app[BOTS] = BotsHub(config, app[STORE], app[HTTP], clock_ms)
        try:
            yield
        finally:
            if own_client:
                await app[CLUSTER].close()
            await app[HTTP].close()
            app[STORE].close()

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(app[HUB].run(), name="admin-live-hub"),
            asyncio.create_task(app[FEED].run(), name="admin-feed"),
            asyncio.create_task(app[BOTS].run(), name="admin-bots"),
            asyncio.create_task(_housekeeping(app), name="admin-housekeeping"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def end_streams(app: web.Application) -> None:
        app[HUB].close()
        app[BOTS].close()

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(background)
    app.on_shutdown.append(end_streams)
    app.on_response_prepare.append(harden_headers)

    r = app.router
    r.add_get("/", root)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    r.add_get("/login", login_form)
    r.add_post("/login", login_submit)
    r.add_post("/logout", logout)
    r.add_get("/cluster", cluster_page)
    r.add_post("/cluster/members", change_members)
    r.add_get("/sale", sale_page)
    r.add_post("/sale/products", create_product)
    r.add_get("/sale/products/{product_id}", product_page)
    r.add_post("/sale/products/{product_id}", edit_product)
    r.add_post("/sale/products/{product_id}/restock", restock)
    r.add_post("/sale/products/{product_id}/open", open_sale)
    r.add_post("/sale/products/{product_id}/close", close_sale)
    r.add_get("/orders", orders_page)
    r.add_post("/orders/{order_id}/unseal", unseal_order)
    r.add_get("/audit", audit_page)
    r.add_get("/bots", bots_page)
    r.add_post("/bots/settings", change_settings)
    r.add_post("/bots/lists", change_list)
    r.add_get("/api/bots", bots_api)
    r.add_get("/api/bots/live", bots_stream)
    r.add_get("/api/cluster", cluster_api)
    r.add_get("/api/live", live_stream)
    r.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)
    return app


async def serve(config: ClusterConfig, stop: asyncio.Event | None = None) -> None:
    """Serve the console until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    listen = config.admin.listen
    site = web.TCPSite(runner, listen.host, listen.port)
    await site.start()
    log.info("console listening", extra={"listen": str(listen), "url": listen.url})
    try:
        await stop.wait()
    finally:
        log.info("console stopping")
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("console stopped")


def main(config: ClusterConfig) -> int:
    """Run the console process; returns the exit code."""
    setup_logging("admin")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
    return 0
