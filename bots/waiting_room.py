"""The waiting room's arithmetic: tickets in arrival order, admitted at a set rate.

Theory of operation: tickets are numbered 1, 2, 3... as they are handed out. The
admission cursor is a number of tickets, ``credit``, that grows at ``rate`` tickets per
second from the sale's opening (never before it); ticket ``seq`` is admitted once
``floor(credit) >= seq``. So tickets are admitted strictly in ticket order, at most
``rate`` per second. Credit never runs more than one ticket ahead of the tickets issued:
when nobody is waiting, the next arrival is admitted at once (if the last admission was
at least ``1 / rate`` seconds ago), and an idle hour does not bank a burst that would let
a crowd in at once. Before the opening tickets are handed out but nobody is admitted.

The rate is read live (the operator changes it from the console): each observation
accrues credit at the rate in force then. Pure: the caller passes the clock. The same
arithmetic runs in Redis (bots.room's Lua script) when gateways share one queue.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

EPSILON = 1e-9  # float slack: 2.9999999999 tickets of credit is 3


@dataclass(frozen=True, slots=True)
class Cursor:
    """The state of one room: tickets issued, admission credit, last observation."""

    issued: int = 0
    credit: float = 0.0
    at: float | None = None

    @property
    def admitted(self) -> int:
        """Tickets 1..admitted are admitted (never more than were issued)."""
        return max(0, min(self.issued, math.floor(self.credit + EPSILON)))

    @property
    def waiting(self) -> int:
        return self.issued - self.admitted


def advance(cursor: Cursor, now: float, rate: float, opening: float | None) -> Cursor:
    """The cursor at ``now``: credit accrued since the last observation (or the opening,
    whichever is later), capped one ticket past the tickets issued."""
    start = cursor.at
    if opening is not None and (start is None or opening > start):
        start = opening
    credit = cursor.credit
    if start is None:  # a new room with no opening: idle since ever, the first is in at once
        credit = cursor.issued + 1.0
    elif opening is None or now >= opening:
        credit = min(cursor.issued + 1.0, credit + rate * max(0.0, now - start))
    at = now if cursor.at is None else max(cursor.at, now)
    return replace(cursor, credit=credit, at=at)


def issue(cursor: Cursor, now: float, rate: float, opening: float | None) -> Cursor:
    """The cursor after handing out ticket ``cursor.issued + 1`` at ``now``."""
    cursor = advance(cursor, now, rate, opening)
    credit = cursor.credit
    if opening is not None and now < opening:
        credit = min(credit, float(cursor.issued))  # nobody is admitted before the opening
    return replace(cursor, issued=cursor.issued + 1, credit=credit)


def position(seq: int, cursor: Cursor) -> int:
    """Tickets still to be admitted up to and including ``seq``; 0 once admitted."""
    return max(0, seq - cursor.admitted)


def estimated_wait_s(
    seq: int, cursor: Cursor, now: float, rate: float, opening: float | None
) -> float:
    """Seconds until ticket ``seq`` is admitted at the current rate; 0 once it is."""
    if seq <= cursor.admitted:
        return 0.0
    before_opening = 0.0 if opening is None else max(0.0, opening - now)
    return before_opening + max(0.0, seq - cursor.credit) / rate


def opening_s(products: Iterable[Mapping[str, Any]], now: float) -> float | None:
    """The sale's opening: the earliest window start among products whose window has not
    ended; None when any such product has no start (its sale is open) or there is none.
    Unix seconds; product views carry ``opens_at_ms`` / ``closes_at_ms`` (null: open)."""
    earliest: float | None = None
    now_ms = now * 1000
    for product in products:
        closes = product.get("closes_at_ms")
        if isinstance(closes, int) and closes <= now_ms:
            continue
        opens = product.get("opens_at_ms")
        if not isinstance(opens, int):
            return None
        earliest = opens / 1000 if earliest is None else min(earliest, opens / 1000)
    return earliest
