"""The node process: the Raft node and its internal API on uvloop, until SIGTERM.

Shutdown (SIGTERM or SIGINT): stop accepting connections, let in-flight requests finish
(a proposal waits at most the commit timeout), then stop the Raft node: the tick thread
ends, connections close, the journal is synced and closed. Exit status 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from cluster.config import ClusterConfig
from cluster.heap import kept_heap
from cluster.logs import setup_logging
from node.api import RUNTIME, make_app

log = logging.getLogger("node.server")

SHUTDOWN_GRACE_S = 2.0  # beyond the commit timeout, for in-flight requests to finish
API_BACKLOG = 1024  # pending connections on the API socket


async def serve(config: ClusterConfig, node_id: str) -> None:
    """Run node ``node_id`` until SIGTERM/SIGINT, then shut down cleanly."""
    me = config.node(node_id)
    app = make_app(config, node_id)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=config.raft.commit_timeout_ms / 1000 + SHUTDOWN_GRACE_S,
    )
    await runner.setup()  # starts the Raft node: the state is loaded before we listen
    try:
        # The ledger's long-lived objects kept out of the collector's full passes: their
        # pauses stopped every commit behind them (cluster/heap.py).
        async with kept_heap(app[RUNTIME].require().metrics.gc_pause_seconds):
            site = web.TCPSite(runner, me.api.host, me.api.port, backlog=API_BACKLOG)
            await site.start()
            log.info("node API listening", extra={"node": node_id, "api": str(me.api)})
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            log.info("shutting down", extra={"node": node_id})
    finally:
        await runner.cleanup()


def main(config: ClusterConfig, node_id: str) -> int:
    """Process entry: JSON logs, uvloop, serve until told to stop. Returns the exit code."""
    setup_logging(f"node-{node_id}")
    config.node(node_id)
    uvloop.run(serve(config, node_id))
    return 0
