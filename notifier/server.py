"""The ``flashsale notifier`` process: follow the feed, send, serve the internal API.

``main(config)`` runs on uvloop until SIGTERM/SIGINT: the follower's apply in progress
commits (or rolls back) whole, every sender finishes and records the send in progress,
the HTTP server stops, the outbox and key store close, and the process exits 0. With
``[notifier] listen`` set, the internal API (subscriptions, ``/healthz``, ``/metrics``)
is served there. Exit status 2 when the notifier cannot start as configured.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from aiohttp import web

from cluster.config import ClusterConfig
from cluster.logs import setup_logging
from notifier.api import create_app
from notifier.outbox import OutboxBusy
from notifier.render import TemplateError
from notifier.service import Notifier, NotifierSetupError

log = logging.getLogger("notifier.server")

EXIT_SETUP = 2


async def serve(notifier: Notifier, stop: asyncio.Event) -> None:
    """Start ``notifier`` (and its HTTP server) and run it until ``stop`` is set."""
    listen = notifier.settings.listen
    runner: web.AppRunner | None = None
    try:
        await notifier.start()
        if listen is not None:
            runner = web.AppRunner(create_app(notifier), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, listen.host, listen.port).start()
            except OSError as exc:
                raise NotifierSetupError(f"cannot listen on {listen}: {exc.strerror}") from None
        log.info("notifier serving", extra={"listen": str(listen) if listen else None})
        await notifier.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
        await notifier.close()
        log.info("notifier stopped")


async def _main(config: ClusterConfig) -> int:
    try:
        notifier = Notifier(config)
    except (NotifierSetupError, TemplateError) as exc:
        log.error("notifier cannot start", extra={"error": str(exc)})
        return EXIT_SETUP
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(notifier, stop)
    except (OutboxBusy, NotifierSetupError) as exc:
        log.error("notifier cannot start", extra={"error": str(exc)})
        return EXIT_SETUP
    return 0


def main(config: ClusterConfig) -> int:
    """Run the notifier of ``config`` until SIGTERM/SIGINT; the exit status."""
    setup_logging("notifier")
    code = uvloop.run(_main(config))
    if code:
        print("flashsale notifier: cannot start (see the log above)", file=sys.stderr)
    return code
