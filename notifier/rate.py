"""Rate caps per provider: a token bucket (pure; the caller supplies the time).

Theory of operation: a bucket holds at most ``burst`` tokens and gains ``per_minute``
tokens a minute; every send takes one. ``take(now_ms)`` takes a token and answers 0, or
answers how many milliseconds to wait before one is there. ``keep`` lets a caller of
lower priority take a token only when ``keep`` more would remain: bulk notices pass
``keep=1`` so that, however many of them wait, an order notice finds a token at once
(the caps are the provider's, shared by both queues).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MS_PER_MINUTE = 60_000


@dataclass(slots=True)
class TokenBucket:
    per_minute: int
    burst: int
    tokens: float
    updated_ms: int

    @classmethod
    def full(cls, per_minute: int, burst: int, now_ms: int) -> TokenBucket:
        """A bucket that starts with ``burst`` tokens."""
        if per_minute < 1 or burst < 1:
            raise ValueError(f"per_minute={per_minute}, burst={burst}: expected >= 1 each")
        return cls(per_minute, burst, float(burst), now_ms)

    def _refill(self, now_ms: int) -> None:
        if now_ms > self.updated_ms:
            gained = (now_ms - self.updated_ms) * self.per_minute / MS_PER_MINUTE
            self.tokens = min(float(self.burst), self.tokens + gained)
            self.updated_ms = now_ms

    def take(self, now_ms: int, *, keep: int = 0) -> int:
        """Take one token (answer 0) or answer the milliseconds until one can be taken.

        ``keep`` tokens must remain after the take; it is capped at ``burst - 1`` so that
        every caller is served eventually.
        """
        self._refill(now_ms)
        need = 1 + min(max(keep, 0), self.burst - 1)
        if self.tokens >= need:
            self.tokens -= 1
            return 0
        missing = need - self.tokens
        return max(1, math.ceil(missing * MS_PER_MINUTE / self.per_minute))
