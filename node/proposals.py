"""Proposals: the bridge between the event loop and pysyncobj's tick thread.

Theory of operation: a request handler awaits ``Proposals.propose(commands)``. On the
leader only, the batch is stamped with the leader's clock (``at_ms`` on every command and
on the batch) and queued into pysyncobj with a callback. pysyncobj calls that callback on
its tick thread once the entry is applied (or refused); the callback only hands the
outcome to the loop with ``loop.call_soon_threadsafe``: it never blocks and never raises
(an exception there would make pysyncobj apply the entry again).

Every outcome is a value, honest about what is known:
- ``Committed``: the entry is applied; its ledger index and results.
- ``NotLeader``: refused before entering the log (definitely not applied). Carries the
  leader this node knows of, if any.
- ``Overloaded``: too many proposals in flight, or pysyncobj's queue full (not applied).
- ``Unknown``: the entry may or may not be applied: no answer within the commit timeout,
  leadership changed, or the entry was discarded. The client retries with the SAME
  idempotency keys and the ledger answers with the recorded result.
At most ``max_in_flight`` proposals wait at once; a caller beyond that gets Overloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pysyncobj.config import FAIL_REASON

from cluster.config import NodeConfig
from ledger.ledger import Applied
from node.metrics import NodeMetrics

MAX_IN_FLIGHT_PROPOSALS = 1024  # proposals awaiting their commit at once, per node
OVERLOADED_RETRY_AFTER_S = 1  # Retry-After sent with an overload refusal

_FAIL_NAMES = {
    value: name.lower()
    for name, value in vars(FAIL_REASON).items()
    if not name.startswith("_") and isinstance(value, int)
}


@dataclass(frozen=True, slots=True)
class Committed:
    applied: Applied


@dataclass(frozen=True, slots=True)
class NotLeader:
    leader: NodeConfig | None


@dataclass(frozen=True, slots=True)
class Overloaded:
    reason: str
    retry_after_s: int = OVERLOADED_RETRY_AFTER_S


@dataclass(frozen=True, slots=True)
class Unknown:
    reason: str  # timeout | leader_changed | discarded | request_denied | ...


Outcome = Committed | NotLeader | Overloaded | Unknown
Callback = Callable[[Any, int], None]


class Proposer(Protocol):
    """What Proposals needs from the Raft node (RaftNode implements it)."""

    def is_leader(self) -> bool: ...

    def leader(self) -> NodeConfig | None: ...

    def propose(self, at_ms: int, commands: list[dict[str, Any]], callback: Callback) -> None: ...


def outcome_of(result: Any, fail_reason: int, leader: NodeConfig | None) -> Outcome:
    """Map pysyncobj's (result, fail_reason) to an honest outcome."""
    if fail_reason == FAIL_REASON.SUCCESS:
        if isinstance(result, Applied):
            return Committed(result)
        return Unknown("apply_failed")  # the ledger raised: a bug, logged where it happened
    if fail_reason in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER):
        return NotLeader(leader)
    if fail_reason == FAIL_REASON.QUEUE_FULL:
        return Overloaded("raft queue full")
    return Unknown(_FAIL_NAMES.get(fail_reason, f"fail_reason_{fail_reason}"))


class Proposals:
    """Submits batches on the leader and awaits their commit; see the module docstring."""

    def __init__(
        self,
        raft: Proposer,
        *,
        commit_timeout_ms: int,
        metrics: NodeMetrics,
        max_in_flight: int = MAX_IN_FLIGHT_PROPOSALS,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        if commit_timeout_ms <= 0 or max_in_flight <= 0:
            raise ValueError("commit_timeout_ms and max_in_flight must be positive")
        self._raft = raft
        self._timeout_s = commit_timeout_ms / 1000
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._clock_ms = clock_ms
        self._in_flight = 0

    def in_flight(self) -> int:
        return self._in_flight

    async def propose(self, commands: list[dict[str, Any]]) -> Outcome:
        """Propose ``commands`` as one Raft entry and wait for the outcome."""
        outcome = await self._propose(commands)
        self._metrics.proposals.labels(outcome=_label(outcome)).inc()
        return outcome

    async def _propose(self, commands: list[dict[str, Any]]) -> Outcome:
        if self._in_flight >= self._max_in_flight:
            return Overloaded(f"{self._in_flight} proposals in flight")
        if not self._raft.is_leader():
            return NotLeader(self._raft.leader())
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def settle(result: Any, fail_reason: int) -> None:
            if not done.done():
                done.set_result((result, fail_reason))

        def on_commit(result: Any, fail_reason: int) -> None:  # tick thread
            with contextlib.suppress(Exception):  # e.g. the loop closed during shutdown
                loop.call_soon_threadsafe(settle, result, fail_reason)

        at_ms = self._clock_ms()
        stamped = [{**c, "at_ms": at_ms} for c in commands]
        started = time.perf_counter()
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)
        try:
            self._raft.propose(at_ms, stamped, on_commit)
            try:
                async with asyncio.timeout(self._timeout_s):
                    result, fail_reason = await done
            except TimeoutError:
                return Unknown("timeout")
        finally:
            self._in_flight -= 1
            self._metrics.in_flight.set(self._in_flight)
        outcome = outcome_of(result, fail_reason, self._raft.leader())
        if isinstance(outcome, Committed):
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
        return outcome


def _label(outcome: Outcome) -> str:
    if isinstance(outcome, Committed):
        return "committed"
    if isinstance(outcome, NotLeader):
        return "not_leader"
    if isinstance(outcome, Overloaded):
        return "overloaded"
    return "unknown"
