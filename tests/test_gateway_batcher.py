"""Micro-batching: the pure policy and the asyncio driver (gateway.batcher)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.errors import CommitUnknown, InvalidCommand, NoLeader
from gateway.batcher import Batcher, BatchPolicy, Idle, Send, Wait
from gateway.metrics import GatewayMetrics
from gateway.problems import Problem
from ledger.limits import MAX_COMMANDS_PER_ENTRY

# -- the policy ----------------------------------------------------------------------

POLICY = BatchPolicy(window_ms=2, max_batch=500, max_in_flight=1, queue_limit=1000)


@pytest.mark.parametrize(
    ("queued", "age_ms", "in_flight", "expected"),
    [
        (0, 0, 0, Idle()),
        (1, 0, 0, Wait(2)),
        (1, 0.5, 0, Wait(1.5)),
        (1, 2, 0, Send(1)),
        (10, 5, 0, Send(10)),
        (500, 0, 0, Send(500)),  # a full batch does not wait for the window
        (1200, 0, 0, Send(500)),  # never more than max_batch
        (10, 5, 1, Idle()),  # one batch in flight: the queue grows meanwhile
    ],
)
def test_policy_decisions(queued: int, age_ms: float, in_flight: int, expected: object) -> None:
    assert POLICY.decide(queued, age_ms, in_flight) == expected


@settings(max_examples=300)
@given(
    queued=st.integers(0, 5000),
    age_ms=st.floats(0, 100, allow_nan=False),
    in_flight=st.integers(0, 4),
    max_batch=st.integers(1, MAX_COMMANDS_PER_ENTRY),
    window_ms=st.floats(0, 20, allow_nan=False),
    max_in_flight=st.integers(1, 4),
)
def test_policy_never_exceeds_its_bounds_and_never_stalls(
    queued: int,
    age_ms: float,
    in_flight: int,
    max_batch: int,
    window_ms: float,
    max_in_flight: int,
) -> None:
    policy = BatchPolicy(window_ms=window_ms, max_batch=max_batch, max_in_flight=max_in_flight)
    decision = policy.decide(queued, age_ms, in_flight)
    if isinstance(decision, Send):
        assert 1 <= decision.count <= min(queued, max_batch)
        assert in_flight < max_in_flight
    elif isinstance(decision, Wait):
        # Waiting is only for companions, and never beyond the oldest write's window.
        assert 0 < decision.delay_ms <= window_ms
        assert queued < max_batch
    else:
        assert queued == 0 or in_flight >= max_in_flight


def test_queue_bound() -> None:
    assert POLICY.admits(999)
    assert not POLICY.admits(1000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch": 0},
        {"max_batch": MAX_COMMANDS_PER_ENTRY + 1},
        {"window_ms": -1},
        {"max_in_flight": 0},
        {"queue_limit": 0},
    ],
)
def test_policy_limits_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(**kwargs)


# -- the driver ----------------------------------------------------------------------


@dataclass
class Answer:
    index: int
    results: list[dict[str, Any]]


class FakeLeader:
    """Records batches; answers each command with its own key; can fail or stall."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.deadlines: list[float] = []
        self.fail_with: list[Exception] = []
        self.gate: asyncio.Event | None = None

    async def submit(self, commands: list[dict[str, Any]], *, deadline_s: float) -> Answer:
        self.batches.append(list(commands))
        self.deadlines.append(deadline_s)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with:
            raise self.fail_with.pop(0)
        return Answer(len(self.batches), [{"ok": True, "key": c["key"]} for c in commands])


def _cmd(i: int) -> dict[str, Any]:
    return {"type": "reserve", "key": f"k{i}"}


async def _started(leader: FakeLeader, policy: BatchPolicy) -> tuple[Batcher, GatewayMetrics]:
    metrics = GatewayMetrics()
    batcher = Batcher(leader.submit, policy, metrics)
    batcher.start()
    return batcher, metrics


async def test_concurrent_writes_share_one_batch_in_arrival_order() -> None:
    leader = FakeLeader()
    batcher, metrics = await _started(leader, BatchPolicy(window_ms=50, max_batch=500))
    try:
        answers = await asyncio.gather(
            *(batcher.submit(_cmd(i), timeout_s=5) for i in range(100))
        )
        assert len(leader.batches) == 1
        assert [c["key"] for c in leader.batches[0]] == [f"k{i}" for i in range(100)]
        # Every write got its own command's result.
        assert [r["key"] for _, r in answers] == [f"k{i}" for i in range(100)]
        assert {index for index, _ in answers} == {1}
        assert metrics.batch_size.collect()[0].samples[-2].value == 100  # _sum
    finally:
        await batcher.close()


async def test_batches_never_exceed_max_batch_and_keep_order_across_batches() -> None:
    leader = FakeLeader()
    batcher, _ = await _started(leader, BatchPolicy(window_ms=20, max_batch=7))
    try:
        await asyncio.gather(*(batcher.submit(_cmd(i), timeout_s=5) for i in range(30)))
        assert all(len(b) <= 7 for b in leader.batches)
        sent = [c["key"] for b in leader.batches for c in b]
        assert sent == [f"k{i}" for i in range(30)]
    finally:
        await batcher.close()


async def test_writes_accumulate_while_a_batch_is_in_flight() -> None:
    leader = FakeLeader()
    leader.gate = asyncio.Event()
    batcher, _ = await _started(leader, BatchPolicy(window_ms=0, max_batch=500))
    try:
        first = asyncio.ensure_future(batcher.submit(_cmd(0), timeout_s=5))
        while not leader.batches:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(_cmd(i), timeout_s=5)) for i in range(1, 50)]
        while batcher.queued < 49:
            await asyncio.sleep(0.001)
        assert len(leader.batches) == 1  # max_in_flight=1: the others wait
        leader.gate.set()
        await asyncio.gather(first, *rest)
        assert [len(b) for b in leader.batches] == [1, 49]
    finally:
        await batcher.close()


async def test_a_full_queue_sheds_with_503() -> None:
    leader = FakeLeader()
    leader.gate = asyncio.Event()
    batcher, metrics = await _started(
        leader, BatchPolicy(window_ms=0, max_batch=1, queue_limit=3)
    )
    try:
        in_flight = asyncio.ensure_future(batcher.submit(_cmd(0), timeout_s=5))
        while not leader.batches:
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.submit(_cmd(i), timeout_s=5)) for i in (1, 2, 3)]
        while batcher.queued < 3:
            await asyncio.sleep(0.001)
        with pytest.raises(Problem) as info:
            await batcher.submit(_cmd(99), timeout_s=5)
        assert info.value.status == 503
        assert info.value.headers["Retry-After"]
        assert metrics.shed._value.get() == 1
        leader.gate.set()
        await asyncio.gather(in_flight, *queued)
    finally:
        leader.gate.set()
        await batcher.close()


@pytest.mark.parametrize("exc", [NoLeader("electing"), CommitUnknown("lost")])
async def test_a_failed_batch_fails_every_write_in_it_with_the_cause(exc: Exception) -> None:
    leader = FakeLeader()
    leader.fail_with = [exc]
    batcher, _ = await _started(leader, BatchPolicy(window_ms=20))
    try:
        outcomes = await asyncio.gather(
            *(batcher.submit(_cmd(i), timeout_s=5) for i in range(5)), return_exceptions=True
        )
        assert all(o is exc for o in outcomes)
        # The batcher keeps working afterwards.
        _, result = await batcher.submit(_cmd(9), timeout_s=5)
        assert result["key"] == "k9"
    finally:
        await batcher.close()


async def test_an_undecodable_command_fails_alone_and_the_rest_are_resent_in_order() -> None:
    leader = FakeLeader()
    leader.fail_with = [InvalidCommand("bad quantity", 2)]
    batcher, _ = await _started(leader, BatchPolicy(window_ms=20))
    try:
        outcomes = await asyncio.gather(
            *(batcher.submit(_cmd(i), timeout_s=5) for i in range(5)), return_exceptions=True
        )
        bad = outcomes[2]
        assert isinstance(bad, Problem) and bad.status == 422
        assert [o[1]["key"] for i, o in enumerate(outcomes) if i != 2] == [  # type: ignore[index]
            "k0", "k1", "k3", "k4",
        ]
        assert [c["key"] for c in leader.batches[1]] == ["k0", "k1", "k3", "k4"]
    finally:
        await batcher.close()


async def test_a_batch_is_submitted_with_the_earliest_deadline_of_its_writes() -> None:
    leader = FakeLeader()
    batcher, _ = await _started(leader, BatchPolicy(window_ms=30))
    try:
        await asyncio.gather(
            batcher.submit(_cmd(0), timeout_s=9), batcher.submit(_cmd(1), timeout_s=2)
        )
        assert len(leader.deadlines) == 1
        assert leader.deadlines[0] <= 2
    finally:
        await batcher.close()


async def test_a_write_whose_deadline_passed_in_the_queue_is_never_sent() -> None:
    leader = FakeLeader()
    leader.gate = asyncio.Event()
    batcher, _ = await _started(leader, BatchPolicy(window_ms=0, max_batch=1))
    try:
        blocker = asyncio.ensure_future(batcher.submit(_cmd(0), timeout_s=10))
        while not leader.batches:
            await asyncio.sleep(0.001)
        late = asyncio.ensure_future(batcher.submit(_cmd(1), timeout_s=0.05))
        await asyncio.sleep(0.1)
        leader.gate.set()
        await blocker
        with pytest.raises(Problem) as info:
            await late
        assert info.value.status == 503
        assert all(c["key"] != "k1" for b in leader.batches for c in b)
    finally:
        await batcher.close()


async def test_a_batch_that_never_answers_is_reported_as_unknown_not_as_failed() -> None:
    leader = FakeLeader()
    leader.gate = asyncio.Event()  # never set: the leader hangs
    batcher, _ = await _started(leader, BatchPolicy(window_ms=0))
    try:
        with pytest.raises(CommitUnknown):
            await batcher.submit(_cmd(0), timeout_s=0.05)
    finally:
        leader.gate.set()
        await batcher.close()


async def test_close_fails_queued_writes_and_refuses_new_ones() -> None:
    leader = FakeLeader()
    leader.gate = asyncio.Event()
    batcher, _ = await _started(leader, BatchPolicy(window_ms=0, max_batch=1))
    first = asyncio.ensure_future(batcher.submit(_cmd(0), timeout_s=10))
    queued = asyncio.ensure_future(batcher.submit(_cmd(1), timeout_s=10))
    while batcher.queued < 1 or not leader.batches:
        await asyncio.sleep(0.001)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    leader.gate.set()  # the in-flight batch finishes within the grace period
    await closing
    assert (await first)[1]["key"] == "k0"
    with pytest.raises(Problem) as info:
        await queued
    assert info.value.status == 503
    with pytest.raises(Problem):
        await batcher.submit(_cmd(2), timeout_s=1)


async def test_the_next_batch_leaves_before_the_answered_writes_resume() -> None:
    """Answering a batch's writes runs each waiting handler; the next batch must not wait
    behind them (under load that took longer than the commit)."""
    leader = FakeLeader()
    leader.gate = asyncio.Event()
    batcher, _ = await _started(leader, BatchPolicy(window_ms=0, max_batch=1))
    sent_when_resumed: list[int] = []

    async def write(i: int) -> None:
        await batcher.submit(_cmd(i), timeout_s=5)
        sent_when_resumed.append(len(leader.batches))

    try:
        first = asyncio.ensure_future(write(0))
        while not leader.batches:
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(write(1))
        await asyncio.sleep(0.01)
        assert batcher.queued == 1 and len(leader.batches) == 1  # one batch in flight
        leader.gate.set()
        await asyncio.gather(first, second)
        assert sent_when_resumed[0] == 2  # the second batch was sent first
        assert [b[0]["key"] for b in leader.batches] == ["k0", "k1"]  # arrival order kept
    finally:
        await batcher.close()


async def test_an_answer_that_does_not_match_its_batch_leaves_no_write_waiting() -> None:
    class ShortLeader(FakeLeader):
        async def submit(self, commands: list[dict[str, Any]], *, deadline_s: float) -> Answer:
            answer = await super().submit(commands, deadline_s=deadline_s)
            return Answer(answer.index, answer.results[:-1])

    batcher, metrics = await _started(ShortLeader(), BatchPolicy(window_ms=5))
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(batcher.submit(_cmd(i), timeout_s=30) for i in range(3)),
                return_exceptions=True,
            ),
            2,  # well before the writes' own deadlines
        )
        assert all(isinstance(o, CommitUnknown) for o in outcomes)
        assert metrics.batches.labels("error")._value.get() == 1
    finally:
        await batcher.close()


async def test_a_write_queued_behind_a_hung_batch_is_refused_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.batcher.ANSWER_MARGIN_S", 0.05)
    leader = FakeLeader()
    leader.gate = asyncio.Event()  # the first batch hangs past every deadline below
    batcher, _ = await _started(leader, BatchPolicy(window_ms=0, max_batch=1))
    try:
        hung = asyncio.ensure_future(batcher.submit(_cmd(0), timeout_s=0.1))
        while not leader.batches:
            await asyncio.sleep(0.001)
        started = asyncio.get_running_loop().time()
        with pytest.raises(Problem) as info:
            await batcher.submit(_cmd(1), timeout_s=0.1)  # never sent: 503, retry is safe
        assert info.value.status == 503
        assert asyncio.get_running_loop().time() - started < 1.0
        with pytest.raises(CommitUnknown):  # sent: its outcome is unknown
            await hung
        assert len(leader.batches) == 1
    finally:
        leader.gate.set()
        await batcher.close()
