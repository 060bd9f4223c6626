"""Failover across payment providers, each behind its circuit breaker.

Theory of operation: providers are tried in the configured order (a ``prefer``red one
first: the provider that may already hold this attempt's idempotency key). A provider
whose breaker is open is skipped. The first provider that answers decides:

- succeeded or declined: that is the outcome. A decline is not a provider failure and
  never fails over: the shopper's card was refused, another provider would be a second
  try of the same card that the shopper did not ask for;
- pending (a timeout or an ambiguous error): that is the outcome too. The charge may have
  happened, so charging elsewhere could charge twice; the attempt is reconciled later;
- ``ProviderUnavailable`` (refused connection, 503, 429): the provider certainly did not
  charge, so the next provider is tried.

``NoProviderAvailable`` is raised when no provider could be asked. Before each call the
router awaits ``listener.trying(provider)`` so the caller can persist the attempt
before any money can move, and ``listener.unavailable(provider)`` after a safe failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from payments.breaker import CircuitBreaker, Mode
from payments.provider import (
    ChargeOutcome,
    ChargeRequest,
    ChargeStatus,
    PaymentProvider,
    ProviderUnavailable,
)

log = logging.getLogger("payments.router")


class NoProviderAvailable(Exception):
    """Every provider is down or behind an open breaker; nothing was charged."""

    def __init__(self, reasons: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no provider")
        self.reasons = dict(reasons)


class AttemptListener(Protocol):
    async def trying(self, provider: str) -> None: ...

    async def unavailable(self, provider: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Routed:
    provider: str
    outcome: ChargeOutcome


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PaymentRouter:
    """Providers in order with one breaker each; ``charge`` is the whole failover rule."""

    def __init__(
        self,
        providers: Sequence[PaymentProvider],
        breakers: Mapping[str, CircuitBreaker],
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.providers = list(providers)
        self.breakers = dict(breakers)
        self._clock_ms = clock_ms
        missing = {p.name for p in self.providers} - set(self.breakers)
        if missing:
            raise ValueError(f"no breaker for provider(s) {sorted(missing)}")

    def provider(self, name: str) -> PaymentProvider | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None

    def modes(self) -> dict[str, Mode]:
        now = self._clock_ms()
        return {name: b.mode(now) for name, b in self.breakers.items()}

    def _order(self, prefer: str | None) -> list[PaymentProvider]:
        first = [p for p in self.providers if p.name == prefer]
        return first + [p for p in self.providers if p.name != prefer]

    async def charge(
        self, request: ChargeRequest, listener: AttemptListener, *, prefer: str | None = None
    ) -> Routed:
        """Charge through the first provider that can be asked (see the module docstring)."""
        reasons: dict[str, str] = {}
        for provider in self._order(prefer):
            breaker = self.breakers[provider.name]
            if not breaker.admit(self._clock_ms()):
                reasons[provider.name] = "circuit open"
                continue
            await listener.trying(provider.name)
            try:
                outcome = await provider.charge(request)
            except ProviderUnavailable as exc:
                breaker.failure(self._clock_ms())
                reasons[provider.name] = str(exc) or "unavailable"
                log.warning(
                    "provider unavailable, failing over",
                    extra={"provider": provider.name, "order_id": request.order_id,
                           "reason": reasons[provider.name]},
                )
                await listener.unavailable(provider.name, reasons[provider.name])
                continue
            if outcome.status is ChargeStatus.PENDING:
                breaker.failure(self._clock_ms())
            else:
                breaker.success(self._clock_ms())
            return Routed(provider.name, outcome)
        raise NoProviderAvailable(reasons)
