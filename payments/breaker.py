"""A circuit breaker per payment provider, as a pure state machine (time passed in).

Theory of operation: a closed breaker lets every call through and counts consecutive
failures (an outage, a timeout; a decline is a success: the provider worked). At
``failure_threshold`` failures in a row it opens: calls are refused without touching
the provider until ``cooldown_ms`` have passed since it opened. Then it is half-open:
up to ``half_open_probes`` calls go through as probes. A probe that succeeds closes the
breaker; one that fails opens it again for another cool-down. Every function returns a
new ``BreakerState``; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Mode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open a closed breaker
    cooldown_ms: int = 10_000  # open -> half-open after this
    half_open_probes: int = 1  # calls let through while half-open

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold={self.failure_threshold}: expected >= 1")
        if self.cooldown_ms < 0:
            raise ValueError(f"cooldown_ms={self.cooldown_ms}: expected >= 0")
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes={self.half_open_probes}: expected >= 1")


@dataclass(frozen=True, slots=True)
class BreakerState:
    mode: Mode = Mode.CLOSED
    failures: int = 0  # consecutive, while closed
    opened_at_ms: int = 0  # when it last opened
    probes: int = 0  # calls let through since it became half-open


def effective(state: BreakerState, policy: BreakerPolicy, now_ms: int) -> BreakerState:
    """The state at ``now_ms``: an open breaker whose cool-down passed is half-open."""
    if state.mode is Mode.OPEN and now_ms - state.opened_at_ms >= policy.cooldown_ms:
        return replace(state, mode=Mode.HALF_OPEN, probes=0)
    return state


def admit(state: BreakerState, policy: BreakerPolicy, now_ms: int) -> tuple[bool, BreakerState]:
    """Whether a call may go to the provider now, and the state after letting it."""
    state = effective(state, policy, now_ms)
    if state.mode is Mode.CLOSED:
        return True, state
    if state.mode is Mode.HALF_OPEN and state.probes < policy.half_open_probes:
        return True, replace(state, probes=state.probes + 1)
    return False, state


def on_success(state: BreakerState, policy: BreakerPolicy, now_ms: int) -> BreakerState:
    """A call answered (a decline counts): close, forget failures."""
    return BreakerState()


def on_failure(state: BreakerState, policy: BreakerPolicy, now_ms: int) -> BreakerState:
    """A call failed (unavailable or timed out): count it; open at the threshold."""
    state = effective(state, policy, now_ms)
    if state.mode is Mode.HALF_OPEN:
        return BreakerState(Mode.OPEN, policy.failure_threshold, now_ms, 0)
    if state.mode is Mode.OPEN:
        return state  # a call admitted before it opened: the cool-down runs from the opening
    failures = state.failures + 1
    if failures >= policy.failure_threshold:
        return BreakerState(Mode.OPEN, failures, now_ms, 0)
    return replace(state, failures=failures)


class CircuitBreaker:
    """The mutable holder of one provider's breaker state (the shell around the above)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = BreakerState()

    def mode(self, now_ms: int) -> Mode:
        return effective(self.state, self.policy, now_ms).mode

    def admit(self, now_ms: int) -> bool:
        allowed, self.state = admit(self.state, self.policy, now_ms)
        return allowed

    def success(self, now_ms: int) -> None:
        self.state = on_success(self.state, self.policy, now_ms)

    def failure(self, now_ms: int) -> None:
        self.state = on_failure(self.state, self.policy, now_ms)
