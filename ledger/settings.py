"""Ledger-wide settings: part of the replicated state, changed only by ``Configure``.

``Settings`` is validated when it is built (``ValueError`` names the bad field) and the
same check decides whether a ``Configure`` command is refused, so no ledger can ever hold
settings outside these bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.limits import (
    DEFAULT_MAX_IDEMPOTENCY_KEYS,
    DEFAULT_PAYMENT_TTL_MS,
    DEFAULT_RETENTION_MS,
    MAX_TTL_MS,
)

MIN_TTL_MS = 1_000  # hold TTL and payment TTL lower bound
MIN_RETENTION_MS = 1_000  # idempotency keys and ended records are kept at least this long
MAX_RETENTION_MS = 30 * 24 * 3600 * 1000  # and at most 30 days
MIN_IDEMPOTENCY_KEYS = 1
MAX_IDEMPOTENCY_KEYS = 100_000_000  # upper bound of the configurable cap


def settings_problem(
    payment_ttl_ms: object, retention_ms: object, max_idempotency_keys: object
) -> str | None:
    """The first reason these settings are out of bounds, or None when they are fine."""
    bounds = (
        ("payment_ttl_ms", payment_ttl_ms, MIN_TTL_MS, MAX_TTL_MS),
        ("retention_ms", retention_ms, MIN_RETENTION_MS, MAX_RETENTION_MS),
        (
            "max_idempotency_keys",
            max_idempotency_keys,
            MIN_IDEMPOTENCY_KEYS,
            MAX_IDEMPOTENCY_KEYS,
        ),
    )
    for name, value, low, high in bounds:
        if type(value) is not int or not low <= value <= high:
            return f"{name} must be an integer in {low}..{high}, got {value!r}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How long payments may take and how long the ledger remembers what it did."""

    payment_ttl_ms: int = DEFAULT_PAYMENT_TTL_MS  # checkout -> payment deadline
    retention_ms: int = DEFAULT_RETENTION_MS  # idempotency keys, ended holds/carts/orders
    max_idempotency_keys: int = DEFAULT_MAX_IDEMPOTENCY_KEYS  # oldest forgotten first

    def __post_init__(self) -> None:
        problem = settings_problem(
            self.payment_ttl_ms, self.retention_ms, self.max_idempotency_keys
        )
        if problem is not None:
            raise ValueError(problem)
