"""Following the committed-event feed into the outbox.

Theory of operation: the follower's position is the outbox's feed index, read at start
and never kept apart from the rows. Each step long-polls the feed (any node:
``snapshots.feed.NodeFeed``, the same reader the snapshot writer uses) from there and
applies the page with ``Outbox.apply_page`` on the blocking thread: one transaction for
the notices and the new position. Then the senders are woken. Failures (no node serves
the feed, the outbox or the key store cannot be written or read) are retried with
capped, doubling pauses; the position is re-read from the outbox after each, so nothing
applied before a failure is lost or repeated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from notifier.metrics import NotifierMetrics
from notifier.outbox import Outbox, PageApplied, Unseal
from notifier.sender import Blocking, wall_ms
from snapshots.feed import FeedSource, follow

log = logging.getLogger("notifier.follower")

CATCH_UP_WAIT_MS = 200  # long-poll of ``catch_up`` (short: it watches for a target)


class Follower:
    """Applies a feed to the outbox; ``run`` until stopped."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        call: Blocking,
        feed: FeedSource,
        unseal: Unseal,
        metrics: NotifierMetrics,
        on_enqueued: Callable[[], None],
        batch_events: int,
        wait_ms: int,
    ) -> None:
        if batch_events < 1:
            raise ValueError(f"batch_events={batch_events}: expected >= 1")
        self.outbox = outbox
        self.call = call
        self.feed = feed
        self.unseal = unseal
        self.metrics = metrics
        self.on_enqueued = on_enqueued
        self.batch_events = batch_events
        self.wait_ms = wait_ms
        self.position = -1  # unknown until read from the outbox

    async def step(self, wait_ms: int | None = None) -> PageApplied | None:
        """Fetch one page and apply it; None when there was nothing new."""
        if self.position < 0:
            self.position = await self.call(self.outbox.position)
            self.metrics.feed_index.set(self.position)
        start = self.position
        wait = self.wait_ms if wait_ms is None else wait_ms
        page = await self.feed.fetch(start, self.batch_events, wait)
        if not page.events and page.snapshot is None and page.last_index <= start:
            return None
        done = await self.call(lambda: self.outbox.apply_page(page, self.unseal, wall_ms()))
        m = self.metrics
        m.events.inc(done.events)
        m.feed_index.set(done.index)
        for (channel, queue), n in done.enqueued.items():
            m.enqueued.labels(channel.value, queue.name.lower()).inc(n)
        if done.deduped:
            m.skipped.labels("deduped").inc(done.deduped)
        if done.no_contact:
            m.skipped.labels("no_contact").inc(done.no_contact)
        if done.rebuilt_from is not None:
            m.feed_gaps.inc()
            log.warning(
                "fell behind the feed's retention: notices of the missed events are lost",
                extra={"was_at": done.before_index, "snapshot_index": done.rebuilt_from},
            )
        self.position = done.index
        if done.enqueued:
            self.on_enqueued()
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the feed until ``stop`` is set (an apply in progress completes first)."""
        await follow(
            self.step, stop, failures=self.metrics.failures,
            on_failure=self._recover, logger=log,
        )  # fmt: skip

    async def _recover(self, exc: Exception) -> None:
        # The outbox or the key store failed (disk, locked, database down): nothing was
        # committed; read the position again and retry.
        self.metrics.failures.labels("apply").inc()
        log.warning(
            "applying a feed page failed; retrying",
            extra={"error": f"{type(exc).__name__}: {str(exc)[:500]}"},
        )
        self.position = -1

    async def catch_up(self, index: int, timeout_s: float) -> None:
        """Step until the outbox holds ``index`` (tests)."""
        async with asyncio.timeout(timeout_s):
            while self.position < index:
                await self.step(wait_ms=CATCH_UP_WAIT_MS)
