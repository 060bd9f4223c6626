"""Settings sync: the leader brings the ledger's settings to what cluster.toml asks.

Theory of operation: the ledger's settings (payment TTL, retention) are replicated state,
so a node may not simply read them from its own config file: a node replaying the log
with another config would reach another state. Every ledger starts with the defaults;
on the leader, every ``period_ms``, this compares the ledger's settings with cluster.toml's
``[ledger]`` and, when they differ, proposes one ``Configure`` command (key
``configure:<node>:<ms>``). Any outcome but committed is retried at the next period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from ledger import Settings
from node.proposals import Committed, Proposals

log = logging.getLogger("node.settings_sync")

SETTINGS_SYNC_PERIOD_MS = 1000  # how often the leader compares settings with the config


class SettingsSource(Protocol):
    def is_leader(self) -> bool: ...

    def settings(self) -> Settings: ...


class SettingsSync:
    """Proposes Configure on the leader when the ledger's settings differ from ``desired``."""

    def __init__(
        self,
        source: SettingsSource,
        proposals: Proposals,
        desired: Settings,
        *,
        node_id: str,
        period_ms: int = SETTINGS_SYNC_PERIOD_MS,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._source = source
        self._proposals = proposals
        self._desired = desired
        self._node_id = node_id
        self._period_s = period_ms / 1000
        self._clock_ms = clock_ms

    async def tick(self) -> bool:
        """One comparison; True when a Configure was committed."""
        if not self._source.is_leader():
            return False
        current, want = self._source.settings(), self._desired
        if (current.payment_ttl_ms, current.retention_ms) == (
            want.payment_ttl_ms,
            want.retention_ms,
        ):
            return False
        outcome = await self._proposals.propose(
            [
                {
                    "type": "configure",
                    "key": f"configure:{self._node_id}:{self._clock_ms()}",
                    "payment_ttl_ms": want.payment_ttl_ms,
                    "retention_ms": want.retention_ms,
                }
            ]
        )
        if isinstance(outcome, Committed):
            log.info(
                "ledger settings set from the config",
                extra={"payment_ttl_ms": want.payment_ttl_ms, "retention_ms": want.retention_ms},
            )
            return True
        return False

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("settings sync failed")
            await asyncio.sleep(self._period_s)
