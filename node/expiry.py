"""The expiry ticker: the leader proposes ``Expire`` when a hold or order is due.

Theory of operation: the ledger reads no clock, so time only moves when a command
arrives. It expires due items lazily before every command, but with no traffic a due hold
would sit reserved forever. So on the leader, every ``expire_period_ms``, the ticker
compares ``ledger.next_deadline_ms()`` with the wall clock and, when it has passed,
proposes one ``Expire`` command (key ``expire:<node>:<ms>``, unique per node and tick).
Only one such proposal is outstanding at a time; whichever node leads does this, so a hold
expires across leader changes. Any outcome other than committed is simply retried at the
next tick (an expire is idempotent in effect: a second one finds nothing due).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from node.proposals import Committed, Proposals

log = logging.getLogger("node.expiry")


class DeadlineSource(Protocol):
    def is_leader(self) -> bool: ...

    def next_deadline_ms(self) -> int | None: ...


class ExpiryTicker:
    """Periodically proposes Expire on the leader; ``run()`` is a background task."""

    def __init__(
        self,
        source: DeadlineSource,
        proposals: Proposals,
        *,
        node_id: str,
        period_ms: int,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        if period_ms <= 0:
            raise ValueError(f"period_ms={period_ms}: expected > 0")
        self._source = source
        self._proposals = proposals
        self._node_id = node_id
        self._period_s = period_ms / 1000
        self._clock_ms = clock_ms
        self.proposed = 0  # Expire commands proposed (for tests and logs)

    async def tick(self) -> bool:
        """One check; True when an Expire was proposed and committed."""
        if not self._source.is_leader():
            return False
        deadline_ms = self._source.next_deadline_ms()
        now_ms = self._clock_ms()
        if deadline_ms is None or deadline_ms > now_ms:
            return False
        self.proposed += 1
        outcome = await self._proposals.propose(
            [{"type": "expire", "key": f"expire:{self._node_id}:{now_ms}"}]
        )
        if not isinstance(outcome, Committed):
            log.info("expire not committed", extra={"outcome": type(outcome).__name__})
            return False
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            try:
                await self.tick()
            except Exception:
                log.exception("expiry tick failed")
