"""The reconciler: a background task of each gateway that settles its open attempts.

Theory of operation: every ``period_ms`` it takes the attempts this gateway left open
(payments.attempts: unknown outcome, a charge whose request ended without an answer,
charged but not recorded, refund due), least recently looked at first, at most
``MAX_UNRESOLVED_PER_PASS`` a pass, and moves each on through
``PaymentService.reconcile_one``: ask the provider what became of the charge, record
the outcome in the ledger, refund a success the ledger refuses (the order expired
meanwhile). A row still ``charging`` is left alone until its charge must have timed out
(``charging_grace_ms``), so the reconciler never races a request in flight.

Why one per gateway, not one process for the cluster: the attempts live in the
gateway's own store, written on the charging path without a network hop; the
reconciler that owns the store needs no coordination, and it runs wherever payments
run. Webhooks (any gateway) settle most attempts before a pass sees them.
"""

from __future__ import annotations

import asyncio
import logging

from payments.attempts import MAX_UNRESOLVED_PER_PASS
from payments.service import PaymentService

log = logging.getLogger("payments.reconciler")

PRUNE_EVERY_PASSES = 1000  # delete old finished attempts every this many passes


class Reconciler:
    def __init__(self, service: PaymentService, *, period_ms: int, charging_grace_ms: int) -> None:
        self.service = service
        self.period_ms = period_ms
        self.charging_grace_ms = charging_grace_ms
        self.passes = 0

    async def run_once(self) -> int:
        """One pass; how many open attempts it looked at."""
        service = self.service
        now = service.clock_ms()
        attempts = await service.store.open_attempts(
            charging_before_ms=now - self.charging_grace_ms, limit=MAX_UNRESOLVED_PER_PASS
        )
        for attempt in attempts:
            try:
                state, _ = await service.reconcile_one(attempt)
            except Exception:
                # The ledger or the provider failed this time; the row stays open.
                log.warning("reconcile failed; retrying next pass", exc_info=True,
                            extra={"order_id": attempt.order_id, "provider": attempt.provider})
                continue
            if state is not attempt.state:
                log.info("attempt reconciled", extra={
                    "order_id": attempt.order_id, "provider": attempt.provider,
                    "from": str(attempt.state), "to": str(state),
                })
        self.passes += 1
        if self.passes % PRUNE_EVERY_PASSES == 0:
            await service.store.prune(now)
        return len(attempts)

    async def run(self) -> None:
        """Pass after pass until cancelled."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler pass failed")
            await asyncio.sleep(self.period_ms / 1000)
