"""The circuit breaker (a pure state machine) and the router's failover rules.

Hypothesis drives random sequences of calls, answers and clock steps against a tiny
model of the rules; examples pin the named behaviours.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payments.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Mode, admit, on_failure
from payments.provider import (
    ChargeOutcome,
    ChargeRef,
    ChargeRequest,
    ChargeStatus,
    ProviderUnavailable,
    RefundOutcome,
)
from payments.router import NoProviderAvailable, PaymentRouter

POLICY = BreakerPolicy(failure_threshold=3, cooldown_ms=1000, half_open_probes=1)

# A step: ("call", ok?) asks admit and, when admitted, reports the answer; ("wait", ms).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.booleans()),
        st.tuples(st.just("wait"), st.integers(0, 1500)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_the_breaker_follows_its_model(script: list[tuple[str, object]]) -> None:
    breaker = CircuitBreaker(POLICY)
    now = 0
    failures = 0  # the model: consecutive failures while closed
    opened_at: int | None = None
    for kind, value in script:
        if kind == "wait":
            assert isinstance(value, int)
            now += value
            continue
        cooled = opened_at is not None and now - opened_at >= POLICY.cooldown_ms
        allowed = breaker.admit(now)
        # Never a call while open and cooling down; always one when closed.
        assert allowed == (opened_at is None or cooled)
        if not allowed:
            continue
        if value:
            breaker.success(now)
            failures, opened_at = 0, None
        else:
            breaker.failure(now)
            if opened_at is not None:  # a failed probe: open again from now
                opened_at = now
            else:
                failures += 1
                if failures >= POLICY.failure_threshold:
                    opened_at = now
        assert (breaker.mode(now) is Mode.CLOSED) == (opened_at is None)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5))
def test_a_half_open_breaker_lets_only_its_probes_through(start: int, probes: int) -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_ms=500, half_open_probes=probes)
    state = on_failure(BreakerState(), policy, start)
    assert state.mode is Mode.OPEN
    assert admit(state, policy, start + 499)[0] is False
    admitted = 0
    for _ in range(probes + 3):
        allowed, state = admit(state, policy, start + 500)
        admitted += allowed
    assert admitted == probes


def test_a_closed_breaker_opens_at_the_threshold_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(POLICY)
    breaker.failure(0)
    breaker.failure(0)
    breaker.success(0)
    breaker.failure(0)
    breaker.failure(0)
    assert breaker.mode(0) is Mode.CLOSED
    breaker.failure(0)
    assert breaker.mode(0) is Mode.OPEN and not breaker.admit(999)
    assert breaker.admit(1000) and breaker.mode(1000) is Mode.HALF_OPEN
    breaker.success(1000)
    assert breaker.mode(1000) is Mode.CLOSED


@pytest.mark.parametrize("bad", [
    {"failure_threshold": 0}, {"cooldown_ms": -1}, {"half_open_probes": 0},
])
def test_policy_limits_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**bad)


# -- the router's rules, with scripted providers ----------------------------------------


@dataclass
class Scripted:
    """A provider that answers from a script (the HTTP providers are tested elsewhere)."""

    name: str
    answer: ChargeStatus | None  # None: unavailable
    calls: int = 0

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        self.calls += 1
        if self.answer is None:
            raise ProviderUnavailable("down")
        return ChargeOutcome(self.answer, f"{self.name}-txn")

    async def status(self, ref: ChargeRef) -> ChargeOutcome:
        return ChargeOutcome(ChargeStatus.NOT_FOUND)

    async def refund(self, transaction_id: str, amount_minor: int, currency: str,
                     idempotency_key: str) -> RefundOutcome:
        return RefundOutcome("r", True)

    async def close(self) -> None:
        return None


class Tries:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    async def trying(self, provider: str) -> None:
        self.log.append(("trying", provider))

    async def unavailable(self, provider: str, reason: str) -> None:
        self.log.append(("unavailable", provider))


REQUEST = ChargeRequest("o1", 1999, "USD", "pm_card_visa", "order:o1:attempt:1")


def _router(*providers: Scripted, threshold: int = 5) -> PaymentRouter:
    policy = BreakerPolicy(failure_threshold=threshold, cooldown_ms=1000)
    return PaymentRouter(
        list(providers), {p.name: CircuitBreaker(policy) for p in providers}, clock_ms=lambda: 0
    )


@pytest.mark.parametrize("answer", [ChargeStatus.DECLINED, ChargeStatus.PENDING,
                                    ChargeStatus.SUCCEEDED])
async def test_only_a_certain_non_charge_fails_over(answer: ChargeStatus) -> None:
    first, second = Scripted("a", answer), Scripted("b", ChargeStatus.SUCCEEDED)
    routed = await _router(first, second).charge(REQUEST, Tries())
    assert routed.provider == "a" and routed.outcome.status is answer
    assert second.calls == 0, "a decline or an unknown outcome never reaches another provider"


async def test_an_unavailable_provider_fails_over_and_is_written_before_each_try() -> None:
    first, second = Scripted("a", None), Scripted("b", ChargeStatus.SUCCEEDED)
    tries = Tries()
    routed = await _router(first, second).charge(REQUEST, tries)
    assert routed.provider == "b"
    assert tries.log == [("trying", "a"), ("unavailable", "a"), ("trying", "b")]


async def test_open_breakers_are_skipped_and_all_down_raises() -> None:
    first, second = Scripted("a", None), Scripted("b", None)
    router = _router(first, second, threshold=1)
    with pytest.raises(NoProviderAvailable):
        await router.charge(REQUEST, Tries())
    with pytest.raises(NoProviderAvailable) as caught:
        await router.charge(REQUEST, Tries())
    assert caught.value.reasons == {"a": "circuit open", "b": "circuit open"}
    assert first.calls == second.calls == 1


async def test_a_preferred_provider_is_asked_first() -> None:
    first, second = Scripted("a", ChargeStatus.SUCCEEDED), Scripted("b", ChargeStatus.SUCCEEDED)
    routed = await _router(first, second).charge(REQUEST, Tries(), prefer="b")
    assert routed.provider == "b" and first.calls == 0
