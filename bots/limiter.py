"""The rate limiter a gateway uses: Redis when configured, local buckets otherwise.

With Redis, every decision is taken there (shared by all gateways), each call bounded
by ``redis_timeout_ms``. A call that fails or is too slow is answered from the local
buckets instead, and the limiter stays on them (``falling_back``), trying Redis again
once per ``retry_s``: limits never disappear (no failing open) and never refuse
everyone (no failing closed). Local buckets are per process, so while falling back a
client can get up to one burst per gateway; that is the price of staying up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bots.buckets import ALLOWED, Limit, Verdict
from bots.local_limiter import LocalLimiter
from bots.redis_limiter import RedisLimiter

log = logging.getLogger("bots.limiter")

REDIS_RETRY_S = 1.0  # while falling back, one request per this long tries Redis again


class Limiter:
    """Rate limits per request: ``take`` answers allowed or how long to wait."""

    def __init__(
        self,
        local: LocalLimiter,
        remote: RedisLimiter | None = None,
        *,
        timeout_s: float = 0.05,
        retry_s: float = REDIS_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.local = local
        self.remote = remote
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.clock = clock
        self.on_fallback = on_fallback
        self.falling_back = False
        self._retry_at = 0.0

    @property
    def redis_ok(self) -> bool:
        """True when Redis is configured and the last call to it succeeded."""
        return self.remote is not None and not self.falling_back

    async def take(self, limits: list[Limit]) -> Verdict:
        """Take one request's tokens from every bucket of ``limits``."""
        if not limits:
            return ALLOWED
        if self.remote is not None and (not self.falling_back or self.clock() >= self._retry_at):
            # Claimed before the call: requests arriving during the probe stay local.
            self._retry_at = self.clock() + self.retry_s
            try:
                async with asyncio.timeout(self.timeout_s):
                    verdict = await self.remote.take(limits)
            except Exception as exc:  # any Redis failure: local limits, never none
                self._fall_back(exc)
            else:
                if self.falling_back:
                    log.info("redis back: rate limits shared again")
                self.falling_back = False
                return verdict
        return self.local.take(limits, self.clock())

    def redis_answered(self) -> None:
        """Redis answered someone else (the policy store): try it on the next request."""
        if self.falling_back:
            self._retry_at = 0.0

    def _fall_back(self, exc: Exception) -> None:
        if not self.falling_back:
            log.warning(
                "redis failed: local rate limits until it answers",
                extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
            )
        self.falling_back = True
        if self.on_fallback is not None:
            self.on_fallback()
