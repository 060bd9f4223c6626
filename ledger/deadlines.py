"""Deadlines: when each active hold expires and each pending order must be paid by.

A min-heap of ``(deadline_ms, kind, number, id)``. Nothing is removed from the middle of
the heap when a hold is released or an order is paid: the owner of the records skips
entries that are no longer live when they surface (lazy deletion), which keeps every
operation O(log n). Ties on the deadline break on kind (holds first) then creation
number, so the order in which due items expire is fixed by the log alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

HOLD = 0
ORDER = 1

# (deadline_ms, HOLD or ORDER, creation number (unique within its kind), record id).
# A plain tuple: one is pushed per reserve, and a NamedTuple costs ten times as much.
Deadline = tuple[int, int, int, str]


class Deadlines:
    """The heap of pending deadlines, with stale entries skipped lazily."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[Deadline] = []

    def push(self, deadline_ms: int, kind: int, number: int, record_id: str) -> None:
        heapq.heappush(self._heap, (deadline_ms, kind, number, record_id))

    def is_due(self, now_ms: int) -> bool:
        heap = self._heap
        return bool(heap) and heap[0][0] <= now_ms

    def pop_due(self, now_ms: int) -> Deadline | None:
        """The earliest entry if it is due at ``now_ms`` (live or not), else None."""
        heap = self._heap
        if heap and heap[0][0] <= now_ms:
            return heapq.heappop(heap)
        return None

    def drop_stale(self, is_live: Callable[[Deadline], bool]) -> None:
        """Pop dead entries off the top so that ``first_ms`` is a live deadline."""
        heap = self._heap
        while heap and not is_live(heap[0]):
            heapq.heappop(heap)

    def first_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def entries(self) -> list[Deadline]:
        """Every entry, live or stale, in no particular order."""
        return list(self._heap)
