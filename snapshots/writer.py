"""The snapshot writer: follow the feed, apply each page to the store, forever.

Theory of operation: the writer's position is the store's applied index, read at start
and after every failure, never kept apart from the rows. Each step long-polls the feed
from there and hands the page to the store (``SnapshotStore.apply_page``, in a worker
thread so the event loop keeps serving /metrics). A page holds up to ``batch_events``
events and becomes one transaction: while the sale runs, pages are full and the writer
keeps up by batching; when it is quiet, a page holds what arrived during one long-poll.

Failures are retried with capped, doubling pauses: a feed that no node serves, a
database that is down or locked (the store is then reopened: a PostgreSQL connection
may be gone). The position is re-read from the store after each, so nothing done
before the failure is lost or repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from snapshots.database import DatabaseError
from snapshots.feed import FeedSource, follow
from snapshots.metrics import WriterMetrics
from snapshots.store import Applied, GapError, SnapshotStore

log = logging.getLogger("snapshots.writer")

CATCH_UP_WAIT_MS = 200  # long-poll of ``catch_up`` (short: it watches for a target)


class SnapshotWriter:
    """Applies a feed to a store; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        open_store: Callable[[], SnapshotStore],
        feed: FeedSource,
        *,
        batch_events: int,
        wait_ms: int,
        metrics: WriterMetrics | None = None,
    ) -> None:
        if batch_events < 1:
            raise ValueError(f"batch_events={batch_events}: expected >= 1")
        self._open_store = open_store
        self._store: SnapshotStore | None = None
        self.feed = feed
        self.batch_events = batch_events
        self.wait_ms = wait_ms
        self.metrics = metrics or WriterMetrics()
        self.position = -1  # unknown until the store is open

    async def _ensure_store(self) -> SnapshotStore:
        if self._store is None:
            self._store = await asyncio.to_thread(self._open_store)
            self.position = await asyncio.to_thread(self._store.applied_index)
            self.metrics.applied_index.set(self.position)
            log.info("store open", extra={"applied_index": self.position})
        return self._store

    async def _drop_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                await asyncio.to_thread(store.close)
            except DatabaseError:
                log.warning("closing a failed store connection failed too")

    async def step(self, wait_ms: int | None = None) -> Applied | None:
        """Fetch one page and apply it; None when there was nothing new."""
        store = await self._ensure_store()
        start = self.position
        wait = self.wait_ms if wait_ms is None else wait_ms
        page = await self.feed.fetch(start, self.batch_events, wait)
        if not page.events and page.snapshot is None and page.last_index <= start:
            return None
        t0 = time.perf_counter()
        applied = await asyncio.to_thread(store.apply_page, page, start)
        m = self.metrics
        m.batch_seconds.observe(time.perf_counter() - t0)
        m.batch_events.observe(applied.events)
        m.batches.inc()
        m.events.inc(applied.events)
        m.rows.inc(applied.rows)
        m.applied_index.set(applied.index)
        m.applied_at_ms.set(applied.at_ms)
        if applied.missing_rows:
            m.missing_rows.inc(applied.missing_rows)
        if applied.unsealed_dropped:
            m.unsealed_dropped.inc(applied.unsealed_dropped)
            log.warning(
                "order details that were not sealed were dropped, not stored",
                extra={"count": applied.unsealed_dropped},
            )
        if applied.rebuilt_from is not None:
            m.rebuilds.inc()
            log.warning(
                "rebuilt from a ledger snapshot: the writer was behind the feed's retention",
                extra={"snapshot_index": applied.rebuilt_from, "was_at": applied.before_index},
            )
        self.position = applied.index
        return applied

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the feed until ``stop`` is set (a step in progress completes first)."""
        try:
            await follow(
                self.step, stop, failures=self.metrics.failures,
                on_failure=self._recover, logger=log,
            )  # fmt: skip
        finally:
            await self._drop_store()

    async def _recover(self, exc: Exception) -> None:
        """A failed step the writer survives: reopen the store and read its position."""
        if isinstance(exc, GapError):
            self.metrics.failures.labels("gap").inc()
            log.warning("position behind the store; refetching", extra={"error": str(exc)})
        elif isinstance(exc, DatabaseError):
            self.metrics.failures.labels("store").inc()
            log.warning("store write failed; reopening", extra={"error": str(exc)[:500]})
        else:
            raise exc
        await self._drop_store()

    async def catch_up(self, index: int, timeout_s: float) -> None:
        """Step until the store holds ``index`` (tests and the benchmark)."""
        async with asyncio.timeout(timeout_s):
            await self._ensure_store()
            while self.position < index:
                await self.step(wait_ms=CATCH_UP_WAIT_MS)
