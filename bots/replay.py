"""Each proof-of-work solution is accepted once: the replay store.

A solution is remembered until its challenge expires (after that bots.challenge refuses
it anyway). Locally: a bounded, insertion-ordered map of challenge -> expiry, trimmed of
expired entries as it goes; when it is full the oldest entry is dropped (every entry has
the same lifetime, so the oldest is the next to expire). With Redis configured, the
solution is also claimed with ``SET key 1 NX PX ttl``, so two gateways refuse the same
solution: the first claim wins. A Redis failure (down, slower than the timeout) falls
back to the local map for that request; the local map is always written, so a solution
used during an outage is still refused by this gateway afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from redis.asyncio import Redis

log = logging.getLogger("bots.replay")

# Per gateway process: 1,666 holds a second sustained over the default 300 s challenge
# lifetime, ~80 MB when full. Past it the oldest is dropped (and could be replayed here
# once; with Redis, never).
MAX_REMEMBERED_SOLUTIONS = 500_000


def _compact(solution_id: str) -> bytes:
    """A hex id as its bytes: about half the memory of the text."""
    try:
        return bytes.fromhex(solution_id)
    except ValueError:
        return solution_id.encode()


class ReplayStore:
    """``claim(id, expires_s, now)`` answers True the first time an id is seen."""

    def __init__(
        self,
        *,
        redis: Redis | None = None,
        prefix: str = "",
        timeout_s: float = 0.05,
        max_entries: int = MAX_REMEMBERED_SOLUTIONS,
    ) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._redis = redis
        self._prefix = prefix
        self._max = max_entries
        self._timeout_s = timeout_s
        self.redis_ok = redis is not None
        self.redis_failures = 0

    def _trim(self, now: float) -> None:
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires >= now and len(self._seen) < self._max:
                return
            del self._seen[oldest]

    def claim_local(self, solution_id: str, expires_s: float, now: float) -> bool:
        """The local half of ``claim`` (no I/O)."""
        self._trim(now)
        key = _compact(solution_id)
        if key in self._seen:
            return False
        self._seen[key] = expires_s
        return True

    async def claim(self, solution_id: str, expires_s: float, now: float) -> bool:
        """True when this solution was not used before (here or, with Redis, anywhere)."""
        if not self.claim_local(solution_id, expires_s, now):
            return False
        if self._redis is None:
            return True
        ttl_ms = max(1, int((expires_s - now) * 1000) + 1000)
        try:
            async with asyncio.timeout(self._timeout_s):
                claimed = await self._redis.set(
                    f"{self._prefix}altcha:{solution_id}", "1", nx=True, px=ttl_ms
                )
        except Exception as exc:  # any Redis failure: this gateway's own memory decides
            self.redis_failures += 1
            if self.redis_ok:
                log.warning("replay store: Redis failed, local only", extra={"error": str(exc)})
            self.redis_ok = False
            return True
        self.redis_ok = True
        return bool(claimed)

    def __len__(self) -> int:
        return len(self._seen)
