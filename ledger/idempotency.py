"""Idempotency memory: what the ledger answered to each key, for a bounded time.

Every applied command is remembered under its key with the command itself and its
result. A command arriving again with a remembered key is not applied again: if it is the
same command (every field but ``at_ms``, which the leader re-stamps on a retry) the
stored result is the answer, otherwise the key was reused for something else.

Keys are kept in the order they were first applied. Because ledger time never goes back,
that order is also the order of their ``first_ms``, so forgetting by age (retention) and
by count (the cap) both drop from the front of one FIFO: O(1) per key, and exactly the
same keys on every node.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any

from ledger.commands import COMMAND_TYPES, Command
from ledger.results import Result

# (command, its result, ledger time when the key was first applied). A plain tuple: one
# is made per command applied.
Remembered = tuple[Command, Result, int]


def _identity_getter(cls: type[Command]) -> Callable[[Any], object]:
    names = [f.name for f in dataclasses.fields(cls) if f.name != "at_ms"]
    return attrgetter(*names)


# The fields that make two commands "the same" for idempotency: all but at_ms.
_IDENTITY: dict[type[Command], Callable[[Any], object]] = {
    cls: _identity_getter(cls) for cls in COMMAND_TYPES.values()
}


def same_command(a: Command, b: Command) -> bool:
    """True when ``a`` and ``b`` are the same command apart from their ``at_ms``."""
    cls = type(a)
    if type(b) is not cls:
        return False
    identity = _IDENTITY[cls]
    return identity(a) == identity(b)


class IdempotencyMemory:
    """Key -> (command, result, first_ms), forgotten oldest first."""

    __slots__ = ("_entries", "_order")

    def __init__(self) -> None:
        self._entries: dict[str, Remembered] = {}
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Remembered | None:
        return self._entries.get(key)

    def remember(self, key: str, command: Command, result: Result, first_ms: int) -> int:
        """Remember a key that is not remembered yet; returns how many keys are remembered."""
        self._entries[key] = (command, result, first_ms)
        self._order.append(key)
        return len(self._order)

    def oldest_ms(self) -> int | None:
        """``first_ms`` of the oldest remembered key."""
        return self._entries[self._order[0]][2] if self._order else None

    def forget_through(self, cutoff_ms: int) -> int:
        """Forget every key first applied at or before ``cutoff_ms``; returns how many."""
        entries, order = self._entries, self._order
        forgotten = 0
        while order and entries[order[0]][2] <= cutoff_ms:
            del entries[order.popleft()]
            forgotten += 1
        return forgotten

    def trim_to(self, max_keys: int) -> int:
        """Forget the oldest keys until at most ``max_keys`` remain; returns how many."""
        entries, order = self._entries, self._order
        forgotten = 0
        while len(order) > max_keys:
            del entries[order.popleft()]
            forgotten += 1
        return forgotten

    def __iter__(self) -> Iterator[tuple[str, Remembered]]:
        """Every remembered key with its entry, oldest first."""
        entries = self._entries
        for key in self._order:
            yield key, entries[key]

    def problems(self) -> list[str]:
        """Internal consistency of the two structures (for the invariant check)."""
        if len(self._order) != len(self._entries) or set(self._order) != self._entries.keys():
            return [
                f"idempotency memory: {len(self._order)} keys in order, "
                f"{len(self._entries)} entries"
            ]
        previous: int | None = None
        for key in self._order:
            first_ms = self._entries[key][2]
            if previous is not None and first_ms < previous:
                return [f"idempotency memory: key {key!r} is older than the key before it"]
            previous = first_ms
        return []
