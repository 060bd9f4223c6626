"""Token buckets kept in this gateway process, keyed by (kind, key).

The default limiter, and the fallback when Redis fails. Memory is bounded: at most
``max_clients`` buckets, the least recently used forgotten first. Forgetting a bucket
gives that client a full one again, so eviction can only be generous, and only towards
clients that have been idle while ``max_clients`` others came.
"""

from __future__ import annotations

from collections import OrderedDict

from bots.buckets import Bucket, Limit, Verdict, take_all


class LocalLimiter:
    """In-process buckets, bounded by LRU eviction."""

    def __init__(self, max_clients: int) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients={max_clients}: expected >= 1")
        self.max_clients = max_clients
        self._buckets: OrderedDict[tuple[str, str], Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, limits: list[Limit], now: float) -> Verdict:
        """Take one request's tokens from every bucket of ``limits`` at ``now``."""
        keys = [(lim.kind, lim.key) for lim in limits]
        states = [self._buckets.get(k) for k in keys]
        new_states, verdict = take_all(states, limits, now)
        for key, state in zip(keys, new_states, strict=True):
            self._buckets[key] = state
            self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return verdict
