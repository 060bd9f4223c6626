"""Proposals: the asyncio <-> tick-thread bridge reports every outcome honestly, stamps
the leader's clock, bounds what is in flight and never hangs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pysyncobj.config import FAIL_REASON

from cluster.config import HostPort, NodeConfig
from ledger import Applied
from node.expiry import ExpiryTicker
from node.metrics import NodeMetrics
from node.proposals import (
    Committed,
    NotLeader,
    Overloaded,
    Proposals,
    Unknown,
    outcome_of,
)

LEADER = NodeConfig("n2", HostPort("127.0.0.1", 7002), HostPort("127.0.0.1", 7102))
CMD = {"type": "expire", "key": "k1"}


class FakeRaft:
    """Answers each proposal from another thread, like pysyncobj's tick thread."""

    def __init__(self, *, leader: bool = True, answer: tuple[Any, int] | None = None) -> None:
        self.leading = leader
        self.answer = answer  # None: never answer
        self.proposed: list[tuple[int, list[dict[str, Any]]]] = []
        self.callbacks: list[Any] = []
        self.deadline_ms: int | None = None

    def is_leader(self) -> bool:
        return self.leading

    def leader(self) -> NodeConfig | None:
        return LEADER

    def next_deadline_ms(self) -> int | None:
        return self.deadline_ms

    def propose(self, at_ms: int, commands: list[dict[str, Any]], callback: Any) -> None:
        self.proposed.append((at_ms, commands))
        self.callbacks.append(callback)
        if self.answer is not None:
            threading.Thread(target=callback, args=self.answer).start()


def make(raft: FakeRaft, **kw: Any) -> Proposals:
    kw.setdefault("commit_timeout_ms", 2000)
    return Proposals(raft, metrics=NodeMetrics(), clock_ms=lambda: 1_700_000_000_123, **kw)


APPLIED = Applied(index=7, results=(), events=())


async def test_committed_batch_carries_the_applied_entry_and_the_leader_clock() -> None:
    raft = FakeRaft(answer=(APPLIED, FAIL_REASON.SUCCESS))
    outcome = await make(raft).propose([CMD, {**CMD, "key": "k2"}])
    assert outcome == Committed(APPLIED)
    at_ms, commands = raft.proposed[0]
    assert at_ms == 1_700_000_000_123
    assert all(c["at_ms"] == at_ms for c in commands)
    assert "at_ms" not in CMD  # the caller's dicts are not modified


async def test_follower_refuses_without_proposing() -> None:
    raft = FakeRaft(leader=False)
    assert await make(raft).propose([CMD]) == NotLeader(LEADER)
    assert raft.proposed == []


async def test_no_answer_within_the_commit_timeout_is_unknown() -> None:
    raft = FakeRaft(answer=None)
    p = make(raft, commit_timeout_ms=50)
    assert await p.propose([CMD]) == Unknown("timeout")
    assert p.in_flight() == 0
    # The late answer arrives on the tick thread after the caller gave up: ignored quietly.
    raft.callbacks[0](APPLIED, FAIL_REASON.SUCCESS)
    await asyncio.sleep(0.01)


async def test_in_flight_proposals_are_bounded() -> None:
    raft = FakeRaft(answer=None)
    p = make(raft, commit_timeout_ms=500, max_in_flight=2)
    waiting = [asyncio.create_task(p.propose([CMD])) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert p.in_flight() == 2
    refused = await p.propose([CMD])
    assert isinstance(refused, Overloaded) and refused.retry_after_s >= 1
    assert len(raft.proposed) == 2
    for cb in raft.callbacks:
        cb(APPLIED, FAIL_REASON.SUCCESS)
    assert [await t for t in waiting] == [Committed(APPLIED)] * 2
    assert p.in_flight() == 0


@pytest.mark.parametrize(
    ("fail_reason", "expected"),
    [
        (FAIL_REASON.NOT_LEADER, NotLeader(LEADER)),
        (FAIL_REASON.MISSING_LEADER, NotLeader(LEADER)),
        (FAIL_REASON.QUEUE_FULL, Overloaded("raft queue full")),
        (FAIL_REASON.LEADER_CHANGED, Unknown("leader_changed")),
        (FAIL_REASON.DISCARDED, Unknown("discarded")),
        (FAIL_REASON.REQUEST_DENIED, Unknown("request_denied")),
        (FAIL_REASON.UNKNOWN_OUTCOME, Unknown("unknown_outcome")),
    ],
)
def test_failure_reasons_map_to_honest_outcomes(fail_reason: int, expected: object) -> None:
    assert outcome_of(None, fail_reason, LEADER) == expected


def test_success_without_a_result_is_not_reported_as_committed() -> None:
    # apply_batch returns None only when the ledger raised (a bug): never claim success.
    assert outcome_of(None, FAIL_REASON.SUCCESS, LEADER) == Unknown("apply_failed")


async def test_expiry_proposes_only_on_the_leader_and_only_when_due() -> None:
    raft = FakeRaft(answer=(APPLIED, FAIL_REASON.SUCCESS))
    now = 1_000_000
    ticker = ExpiryTicker(raft, make(raft), node_id="n1", period_ms=10, clock_ms=lambda: now)
    assert await ticker.tick() is False  # nothing pending
    raft.deadline_ms = now + 1
    assert await ticker.tick() is False  # not due yet
    raft.deadline_ms = now
    raft.leading = False
    assert await ticker.tick() is False  # due, but a follower never proposes
    raft.leading = True
    assert await ticker.tick() is True
    assert raft.proposed[-1][1] == [
        {"type": "expire", "key": "expire:n1:1000000", "at_ms": 1_700_000_000_123}
    ]
