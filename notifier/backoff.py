"""When to try a failed send again (pure).

Theory of operation: the pause after the n-th failed attempt is ``first_ms`` doubled
n-1 times, capped at ``max_ms``, then spread over its upper half by ``jitter`` (a number
in [0, 1) the caller draws), so that notices that failed together do not all come back
in the same millisecond. After ``max_attempts`` attempts a notice is given up.
"""

from __future__ import annotations

JITTER_SHARE = 0.5  # the pause is drawn from [(1 - share) * p, p]
MAX_DOUBLINGS = 40  # beyond this the cap has long been reached (and 2**n stays small)


def retry_delay_ms(attempt: int, first_ms: int, max_ms: int, jitter: float) -> int:
    """The pause after failed attempt number ``attempt`` (1 for the first send)."""
    if attempt < 1:
        raise ValueError(f"attempt={attempt}: expected >= 1")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter={jitter}: expected 0 <= jitter < 1")
    pause = min(max_ms, first_ms << min(attempt - 1, MAX_DOUBLINGS))
    return max(1, round(pause * (1 - JITTER_SHARE * jitter)))


def gives_up(attempts: int, max_attempts: int) -> bool:
    """True when a notice that failed ``attempts`` times is not tried again."""
    return attempts >= max_attempts
