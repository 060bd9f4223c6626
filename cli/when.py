"""Points in time typed by people (ISO 8601, or ``now``) to milliseconds since the epoch.

A time without a UTC offset is refused rather than guessed: a sale window that opens an
hour early because the server runs in another zone is the kind of mistake to rule out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)


def parse_when_ms(text: str, now_ms: int) -> int:
    """``now`` or an ISO 8601 time with offset (``2025-11-28T09:00:00Z``) -> epoch ms."""
    if text.strip().lower() == "now":
        return now_ms
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"time {text!r}: expected ISO 8601 like 2025-11-28T09:00:00Z, or 'now'"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"time {text!r}: add a UTC offset (Z or +01:00) so it is unambiguous")
    return (when - EPOCH) // ONE_MS


def format_ms(ms: int | None) -> str:
    """Epoch ms -> RFC 3339 UTC (``2025-11-28T09:00:00Z``); ``-`` for None."""
    if ms is None:
        return "-"
    when = EPOCH + ms * ONE_MS
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"
