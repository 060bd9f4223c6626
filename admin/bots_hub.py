"""The gateways' bot defences as the console follows and keeps them.

Theory of operation: one background task (``BotsHub.run``) reads every gateway's
``GET /internal/bots`` each ``LIVE_PERIOD_MS`` and compares it with what operators
decided (admin.bots_store). A gateway that differs, typically one restarted without
Redis and back on cluster.toml's numbers with empty lists, is sent the difference
(``admin.bots_view.plan``, at most ``MAX_REAPPLY_OPS`` list changes per poll), and the
re-application is written to the audit log as the console's own action. Each poll
publishes one snapshot (admin.bots_view.snapshot) to the open Bots and queue pages.

An operator's change (``change_settings``, ``change_list``) is recorded first, then sent
to every gateway at once; a gateway that is down gets it from the poll when it is back.
Polls and changes take turns (one lock), so a poll never compares a gateway read before
a change with the record written after it and undoes the change.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from admin import audit, bots_store
from admin.bots_gateways import BotsApi, GatewayAnswer
from admin.bots_values import SETTINGS, Number
from admin.bots_view import BotsReading, plan, snapshot
from admin.limits import (
    BOTS_WRITE_TIMEOUT_MS,
    LIVE_PERIOD_MS,
    MAX_BOT_LIST_ROWS_SHOWN,
    MAX_REAPPLY_OPS,
    MAX_SSE_SUBSCRIBERS,
    STATUS_TIMEOUT_MS,
)
from admin.live import Snapshot, Subscriber, TooManySubscribers
from cluster.config import ClusterConfig, GatewayConfig

log = logging.getLogger("admin.bots")

CONSOLE_ACTOR = "console"  # the audit log's operator for the console's own re-applications


class BotsHub:
    """Polls the gateways' bots API, re-applies operators' decisions, fans snapshots out."""

    def __init__(
        self,
        config: ClusterConfig,
        store: sqlite3.Connection,
        http: aiohttp.ClientSession,
        clock_ms: Callable[[], int],
    ) -> None:
        self._config = config
        self._store = store
        self._api = BotsApi(config, http)
        self._clock_ms = clock_ms
        self._lock = asyncio.Lock()
        self._subscribers: set[Subscriber] = set()
        self._readings: dict[str, BotsReading] = {
            g.id: BotsReading(g.id, str(g.listen), None, "not asked yet") for g in config.gateways
        }
        self.defaults: dict[str, Number] = {s: getattr(config.bots, s) for s in SETTINGS}
        self.list_cap = config.bots.max_list_entries
        self.latest: Snapshot | None = None
        self._closed = False

    # -- subscribers (the same contract as admin.live.LiveHub) --------------------------

    def subscribe(self) -> Subscriber:
        if self._closed:
            raise TooManySubscribers("the console is shutting down")
        if len(self._subscribers) >= MAX_SSE_SUBSCRIBERS:
            raise TooManySubscribers(f"{MAX_SSE_SUBSCRIBERS} live streams are open already")
        sub = Subscriber()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        self._closed = True
        for sub in list(self._subscribers):
            sub.offer(None)

    # -- the picture ---------------------------------------------------------------------

    def view(self) -> Snapshot:
        """The page as of the last poll or change, with the record as it is now."""
        return snapshot(
            self._clock_ms(),
            [self._readings[g.id] for g in self._config.gateways],
            bots_store.wanted(self._store),
            self.defaults,
            MAX_BOT_LIST_ROWS_SHOWN,
        )

    def _publish(self) -> Snapshot:
        self.latest = self.view()
        for sub in list(self._subscribers):
            sub.offer(self.latest)
        return self.latest

    # -- polling and re-applying ----------------------------------------------------------

    async def _keep(self, gateway: GatewayConfig, answer: GatewayAnswer) -> BotsReading:
        """Bring one gateway to the record; the reading after doing so."""
        listen = str(gateway.listen)
        if answer.doc is None:
            return BotsReading(gateway.id, listen, None, answer.error)
        wanted = bots_store.wanted(self._store)
        todo = plan(wanted, answer.doc, MAX_REAPPLY_OPS)
        if todo.empty:
            return BotsReading(gateway.id, listen, answer.doc)
        timeout_s = BOTS_WRITE_TIMEOUT_MS / 1000
        doc, error = answer.doc, None
        sent: list[dict[str, Any]] = []
        if todo.settings:
            put = await self._api.put_settings(gateway, todo.settings, timeout_s)
            if put.doc is not None:
                doc = put.doc
                sent.append({"settings": dict(todo.settings)})
            else:
                error = f"re-applying settings: {put.error}"
        for op in todo.ops if error is None else ():
            done = await self._api.change_list(gateway, op.list, op.op, op.value, timeout_s)
            if done.doc is None:
                error = f"re-applying {op.op} {op.value} on {op.list}: {done.error}"
                break
            doc = done.doc
            sent.append({"list": op.list, "op": op.op, "value": op.value})
        if sent:
            log.info("re-applied bot settings", extra={"gateway": gateway.id, "changes": len(sent)})
            audit.record(
                self._store,
                at_ms=self._clock_ms(),
                operator=CONSOLE_ACTOR,
                action="bots.reapply",
                target=gateway.id,
                details={"changes": sent[:20], "count": len(sent), "error": error},
            )
        left = plan(wanted, doc, MAX_REAPPLY_OPS).size
        return BotsReading(gateway.id, listen, doc, error, len(sent), left)

    async def poll_once(self) -> Snapshot:
        """Read every gateway, re-apply where needed, publish the snapshot."""
        gateways = self._config.gateways
        async with self._lock:
            answers = await self._api.fetch_all(STATUS_TIMEOUT_MS / 1000)
            readings = await asyncio.gather(
                *(self._keep(g, a) for g, a in zip(gateways, answers, strict=True))
            )
            self._readings.update((r.id, r) for r in readings)
        return self._publish()

    async def run(self) -> None:
        """Poll every ``LIVE_PERIOD_MS`` until cancelled."""
        period_s = LIVE_PERIOD_MS / 1000
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:
                # A bug here must not stop the page or the re-applying for good.
                log.exception("bots poll failed")
            await asyncio.sleep(max(0.05, period_s - (time.monotonic() - started)))

    # -- operators' changes ---------------------------------------------------------------

    def _after_change(self, answers: list[GatewayAnswer]) -> None:
        wanted = bots_store.wanted(self._store)
        for gateway, answer in zip(self._config.gateways, answers, strict=True):
            if answer.doc is not None:
                left = plan(wanted, answer.doc, MAX_REAPPLY_OPS).size
                self._readings[gateway.id] = BotsReading(
                    gateway.id, str(gateway.listen), answer.doc, None, 0, left
                )
        self._publish()

    async def change_settings(
        self, values: Mapping[str, Number], *, by: str
    ) -> list[GatewayAnswer]:
        """Record ``values`` (checked already) and send them to every gateway."""
        async with self._lock:
            bots_store.set_settings(self._store, values, at_ms=self._clock_ms(), by=by)
            answers = await self._api.put_settings_all(values, BOTS_WRITE_TIMEOUT_MS / 1000)
            self._after_change(answers)
        return answers

    async def change_list(self, list_: str, op: str, value: str, *, by: str) -> list[GatewayAnswer]:
        """Record an entry added or removed (checked already) and send it to every gateway;
        bots_store.ListFull when the list is full."""
        async with self._lock:
            now = self._clock_ms()
            if op == "add":
                bots_store.add_entry(self._store, list_, value, cap=self.list_cap, at_ms=now, by=by)
            else:
                bots_store.remove_entry(
                    self._store, list_, value, cap=self.list_cap, at_ms=now, by=by
                )
            answers = await self._api.change_list_all(
                list_, op, value, BOTS_WRITE_TIMEOUT_MS / 1000
            )
            self._after_change(answers)
        return answers


def answers_json(answers: list[GatewayAnswer]) -> list[dict[str, Any]]:
    """What the audit log keeps of a change's outcome on each gateway."""
    return [{"gateway": a.gateway, "ok": a.ok, "error": a.error} for a in answers]
