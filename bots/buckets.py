"""The token bucket: a pure function from (state, time, rate, burst) to a decision.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second; a request
takes ``cost`` tokens or, when there are not enough, is refused with the exact time
after which there will be. A client that never came has a full bucket (``state=None``).
The same arithmetic runs in Redis (bots.redis_limiter's Lua script) so that every
gateway sharing a Redis applies the same limits; keep the two in step.

Time may go backwards (a clock step): the bucket then simply does not refill until time
has caught up with its ``updated_at`` again, which never grants more than ``burst``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Float sums of refill and cost can miss a whole token by a rounding error; a request
# this close to affordable is allowed, so that waiting exactly retry_after_s suffices.
EPSILON_TOKENS = 1e-9


@dataclass(frozen=True, slots=True)
class Bucket:
    """Tokens left at ``updated_at`` (seconds, on the caller's clock)."""

    tokens: float
    updated_at: float


def refilled(state: Bucket | None, now: float, rate: float, burst: int) -> Bucket:
    """The bucket at ``now``: refilled at ``rate`` per second, capped at ``burst``."""
    if state is None:
        return Bucket(float(burst), now)
    elapsed = now - state.updated_at
    if elapsed <= 0:
        return state
    return Bucket(min(float(burst), state.tokens + elapsed * rate), now)


def take(
    state: Bucket | None, now: float, rate: float, burst: int, cost: int = 1
) -> tuple[Bucket, bool, float]:
    """Take ``cost`` tokens at ``now``: (new state, allowed, seconds to wait if refused).

    Refused requests take nothing (a client hammering while refused is not punished
    further; it simply stays refused until the bucket refills).
    """
    if rate <= 0 or burst < 1:
        raise ValueError(f"rate={rate}, burst={burst}: expected rate > 0 and burst >= 1")
    if not 0 < cost <= burst:
        raise ValueError(f"cost={cost}: expected 1..burst ({burst})")
    bucket = refilled(state, now, rate, burst)
    if bucket.tokens + EPSILON_TOKENS >= cost:
        return Bucket(max(0.0, bucket.tokens - cost), bucket.updated_at), True, 0.0
    # Time stood still (or went back): the wait is counted from updated_at, the bucket's
    # own notion of now, plus however far the caller's clock is behind it.
    behind = max(0.0, bucket.updated_at - now)
    return bucket, False, behind + (cost - bucket.tokens) / rate


def full_after_s(rate: float, burst: int) -> float:
    """Seconds for an empty bucket to be full again: after this, forgetting it is exact."""
    return burst / rate


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket a request must pay into: ``kind`` (ip, shopper, token) and its key."""

    kind: str
    key: str
    rate: float
    burst: int
    cost: int = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    """Allowed, or refused by the bucket of ``kind`` for ``retry_after_s`` seconds."""

    allowed: bool
    retry_after_s: float = 0.0
    kind: str | None = None


ALLOWED = Verdict(True)


def take_all(
    states: list[Bucket | None], limits: list[Limit], now: float
) -> tuple[list[Bucket], Verdict]:
    """Take from every bucket, or from none: a request refused by one bucket costs the
    others nothing. Refused: the wait is that of the bucket needing the longest."""
    pairs = list(zip(states, limits, strict=True))
    taken = [take(state, now, lim.rate, lim.burst, lim.cost) for state, lim in pairs]
    refused = [
        (wait, lim.kind) for (_, ok, wait), (_, lim) in zip(taken, pairs, strict=True) if not ok
    ]
    if refused:
        wait, kind = max(refused, key=lambda r: r[0])
        unchanged = [refilled(state, now, lim.rate, lim.burst) for state, lim in pairs]
        return unchanged, Verdict(False, wait, kind)
    return [state for state, _, _ in taken], ALLOWED
