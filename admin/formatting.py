"""How the console writes times, durations and sale windows (UTC everywhere)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def time_ms(value: int | None, empty: str = "") -> str:
    """``1764072000000`` -> ``"2025-11-25 12:00:00Z"``."""
    if value is None:
        return empty
    return datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def input_time_ms(value: int | None) -> str:
    """The value of a ``datetime-local`` input for ``value`` (UTC, to the second)."""
    if value is None:
        return ""
    return datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def duration_s(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def sale_state(product: dict[str, Any], now_ms: int) -> str:
    """``open``, ``scheduled`` (opens later) or ``closed``, as a shopper would find it."""
    opens, closes = product.get("opens_at_ms"), product.get("closes_at_ms")
    if isinstance(closes, int) and now_ms >= closes:
        return "closed"
    if isinstance(opens, int) and now_ms < opens:
        return "scheduled"
    return "open"


def window(product: dict[str, Any]) -> str:
    opens, closes = product.get("opens_at_ms"), product.get("closes_at_ms")
    start = time_ms(opens if isinstance(opens, int) else None, "now")
    end = time_ms(closes if isinstance(closes, int) else None, "no end")
    return f"{start} → {end}"
