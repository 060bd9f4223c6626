"""The ``flashsale snapshots`` process: the writer, plus /healthz and /metrics.

``main(config)`` runs the writer on uvloop until SIGTERM/SIGINT: the step in progress
finishes (its transaction commits or rolls back whole), the store and the HTTP client
close, and the process exits 0. With ``[snapshots] listen`` set, an aiohttp application
serves ``GET /healthz`` (with the applied index) and ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cluster.config import ClusterConfig
from cluster.logs import setup_logging
from snapshots.feed import NodeFeed
from snapshots.store import SnapshotStore
from snapshots.writer import SnapshotWriter

log = logging.getLogger("snapshots.server")

WRITER = web.AppKey("snapshot_writer", SnapshotWriter)


async def get_healthz(request: web.Request) -> web.Response:
    writer = request.app[WRITER]
    return web.json_response({"ok": True, "applied_index": writer.position})


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[WRITER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(writer: SnapshotWriter) -> web.Application:
    """The writer's small HTTP application (health and metrics)."""
    app = web.Application()
    app[WRITER] = writer
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/metrics", get_metrics)
    return app


def build_writer(config: ClusterConfig) -> SnapshotWriter:
    """The writer of ``config``: its nodes' feed into ``storage.url``."""
    url = config.storage.url
    return SnapshotWriter(
        lambda: SnapshotStore.open(url),
        NodeFeed(config),
        batch_events=config.snapshots.batch_events,
        wait_ms=config.snapshots.feed_wait_ms,
    )


async def serve(config: ClusterConfig, stop: asyncio.Event) -> None:
    """Run the writer (and its HTTP server) until ``stop`` is set."""
    writer = build_writer(config)
    runner: web.AppRunner | None = None
    listen = config.snapshots.listen
    try:
        if listen is not None:
            runner = web.AppRunner(create_app(writer), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, listen.host, listen.port).start()
        log.info(
            "snapshot writer starting",
            extra={"listen": str(listen) if listen else None, "store": _safe_url(config)},
        )
        await writer.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
        await writer.feed.close()
        log.info("snapshot writer stopped", extra={"applied_index": writer.position})


def _safe_url(config: ClusterConfig) -> str:
    # A PostgreSQL URL may hold a password: log its scheme and host part only.
    url = config.storage.url
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://...@{rest.rpartition('@')[2]}"
    return url


async def _main(config: ClusterConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(config, stop)


def main(config: ClusterConfig) -> int:
    """Run the snapshot writer of ``config`` until SIGTERM/SIGINT; the exit status."""
    setup_logging("snapshots")
    uvloop.run(_main(config))
    return 0
