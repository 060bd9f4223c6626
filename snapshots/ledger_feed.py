"""A feed served from an in-process ledger: the writer's benchmark and tests use it to
produce a sale's events without a cluster, with the node's own retention ring
(``node.feed.Feed``), so a slow reader gets a snapshot exactly as from a real node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ledger import Applied, Ledger, Settings
from ledger.codec import encode_event
from node.feed import Feed
from snapshots.store import FeedPage


class LedgerFeed:
    """A ledger plus the ring of its events, read like ``GET /v1/feed``."""

    def __init__(self, retention_events: int, settings: Settings | None = None) -> None:
        self.ledger = Ledger(settings or Settings())
        self.ring = Feed(retention_events)
        self.requests = 0

    def apply(self, at_ms: int, commands: Sequence[Mapping[str, Any]]) -> Applied:
        """Apply one batch (one "Raft entry") and publish its events."""
        applied = self.ledger.apply_encoded(at_ms, [dict(c) for c in commands])
        self.ring.publish(applied.index, [encode_event(e) for e in applied.events])
        return applied

    async def fetch(self, from_index: int, limit: int, wait_ms: int) -> FeedPage:
        self.requests += 1
        page = self.ring.read(from_index, limit)
        if page is not None:
            return FeedPage(events=page.events, last_index=page.last_index)
        snapshot = self.ledger.snapshot_view()
        index = snapshot["index"]
        if not isinstance(index, int):
            raise TypeError(f"snapshot index {index!r}")
        after = self.ring.read(index, limit)
        events = [] if after is None else after.events
        last = index if after is None else max(index, after.last_index)
        return FeedPage(events=events, last_index=last, snapshot=snapshot)

    async def close(self) -> None:
        self.ring.close()
