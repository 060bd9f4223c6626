"""Errors of the ledger itself (bugs), as opposed to refusals of commands.

A refused command is a ``Rejected`` result, never an exception. The one exception the
ledger raises on purpose is ``InvariantViolation``: its books no longer balance, which is
a bug in this package (or a corrupt snapshot), never a shopper's mistake.
"""

from __future__ import annotations


class InvariantViolation(Exception):
    """The ledger's state breaks one of its invariants (conservation, counters, limits)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = "; ".join(self.problems[:10])
        more = len(self.problems) - 10
        super().__init__(shown + (f" (and {more} more)" if more > 0 else ""))

    def __reduce__(self) -> tuple[type[InvariantViolation], tuple[list[str]]]:
        return (InvariantViolation, (self.problems,))
