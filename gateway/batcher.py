"""Micro-batching: concurrent writes coalesced into one ledger batch (one Raft entry).

Theory of operation: each write (one ledger command) joins a FIFO queue with a future
and a deadline. A pure policy (``BatchPolicy.decide``) says, from the queue length, the
age of the oldest write and the number of batches in flight, whether to send a batch now
(and how big), wait a little longer for companions, or idle:

- nothing queued, or ``max_in_flight`` batches already awaiting an answer: idle;
- ``max_batch`` writes queued, or the oldest has waited ``window_ms``: send (at most
  ``max_batch``, oldest first);
- otherwise wait until the oldest write's window closes.

While a batch is in flight new writes accumulate, so under load batches grow towards
``max_batch`` on their own (group commit) and the window only adds latency when the
gateway is quiet. When a batch's answer arrives, the next batch due leaves first and the
answered writes are resolved after it, so the commit of the next batch overlaps the
answers of the last (their handlers, one response each, run meanwhile). Batches leave
in arrival order, commands inside a batch keep arrival order, and with
``max_in_flight == 1`` the log holds a gateway's writes in arrival order.

The queue is bounded (``queue_limit``): beyond it a write is refused at once (503 +
Retry-After), and a write whose deadline passed while queued is refused without being
sent, so it cannot have been applied. A batch is submitted with the earliest deadline
of its writes; the cluster client retries it on the leader with the same keys, and a
failure (no leader, unknown commit) fails every write of the batch with that cause. No
write outlives its batch unanswered, and each has a timer at its deadline plus
``ANSWER_MARGIN_S`` as a last resort: unknown outcome if it was sent, 503 if not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.errors import CommitUnknown, InvalidCommand, NoLeader, Overloaded
from gateway.metrics import GatewayMetrics
from gateway.problems import invalid_input, overloaded, unavailable
from ledger.limits import MAX_COMMANDS_PER_ENTRY

log = logging.getLogger("gateway.batcher")

CLOSE_GRACE_S = 5.0  # how long close() lets in-flight batches finish
ANSWER_MARGIN_S = 1.0  # past its deadline, how long a write waits for its batch's answer


class SubmitAnswer(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def results(self) -> list[dict[str, Any]]: ...


SubmitFn = Callable[..., Awaitable[SubmitAnswer]]  # submit(commands, *, deadline_s=...)


# -- the pure policy -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    count: int


@dataclass(frozen=True, slots=True)
class Wait:
    delay_ms: float


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing is queued: the batcher waits for the next command."""


Decision = Send | Wait | Idle


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Bounds of batching; ``decide`` is the whole batching decision, without I/O."""

    window_ms: float = 2.0
    max_batch: int = 500
    max_in_flight: int = 1
    queue_limit: int = 10_000

    def __post_init__(self) -> None:
        if self.window_ms < 0:
            raise ValueError(f"window_ms={self.window_ms}: expected >= 0")
        if not 1 <= self.max_batch <= MAX_COMMANDS_PER_ENTRY:
            raise ValueError(f"max_batch={self.max_batch}: expected 1..{MAX_COMMANDS_PER_ENTRY}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight={self.max_in_flight}: expected >= 1")
        if self.queue_limit < 1:
            raise ValueError(f"queue_limit={self.queue_limit}: expected >= 1")

    def admits(self, queued: int) -> bool:
        """Whether one more write may join a queue holding ``queued`` writes."""
        return queued < self.queue_limit

    def decide(self, queued: int, oldest_age_ms: float, in_flight: int) -> Decision:
        """What to do now, given the queue and the batches awaiting an answer."""
        if queued == 0 or in_flight >= self.max_in_flight:
            return Idle()
        if queued >= self.max_batch or oldest_age_ms >= self.window_ms:
            return Send(min(queued, self.max_batch))
        return Wait(self.window_ms - oldest_age_ms)


# -- the driver ------------------------------------------------------------------------


@dataclass(slots=True)
class _Write:
    command: dict[str, Any]
    future: asyncio.Future[tuple[int, dict[str, Any]]]
    enqueued_at: float
    deadline: float
    sent: bool = False


class Batcher:
    """Runs the policy over an asyncio queue; ``submit`` is what handlers call."""

    def __init__(
        self,
        submit: SubmitFn,
        policy: BatchPolicy,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._submit = submit
        self.policy = policy
        self._metrics = metrics
        self._queue: deque[_Write] = deque()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def submit(
        self, command: dict[str, Any], *, timeout_s: float
    ) -> tuple[int, dict[str, Any]]:
        """Apply one command in some batch; its (ledger index, result dict).

        Raises Problem (overloaded/unavailable/invalid), NoLeader or CommitUnknown; never
        waits much longer than ``timeout_s``.
        """
        if self._closed:
            raise unavailable("the gateway is shutting down")
        if not self.policy.admits(len(self._queue)):
            if self._metrics is not None:
                self._metrics.shed.inc()
            raise overloaded("too many writes waiting; retry shortly")
        loop = asyncio.get_running_loop()
        now = loop.time()
        write = _Write(command, loop.create_future(), now, now + timeout_s)
        self._queue.append(write)
        self._gauge()
        self._wake.set()
        # The batch honours the deadline; the margin covers the answer's way back. A bare
        # timer, not asyncio.timeout: a third of the cost, on every write.
        guard = loop.call_at(write.deadline + ANSWER_MARGIN_S, self._expire, write)
        try:
            return await write.future
        finally:
            guard.cancel()

    async def close(self) -> None:
        """Stop batching: queued writes fail, in-flight batches get CLOSE_GRACE_S."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        while self._queue:
            self._fail(self._queue.popleft(), unavailable("the gateway is shutting down"))
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
        self._gauge()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            decision = self._launch_due(loop.time())
            self._wake.clear()
            if isinstance(decision, Wait):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(decision.delay_ms / 1000):
                        await self._wake.wait()
            else:
                await self._wake.wait()

    def _launch_due(self, now: float) -> Decision:
        """Send every batch the policy says is due now; what to do next (Wait or Idle)."""
        while True:
            oldest_age_ms = (now - self._queue[0].enqueued_at) * 1000 if self._queue else 0.0
            decision = self.policy.decide(len(self._queue), oldest_age_ms, len(self._in_flight))
            if not isinstance(decision, Send):
                return decision
            self._launch([self._queue.popleft() for _ in range(decision.count)], now)

    def _free_slot(self, task: asyncio.Task[None] | None) -> None:
        """A batch has its answer: it stops counting as in flight, and the next batch, if
        due, leaves now, before this one's writes are answered. Answering them runs every
        waiting handler (a response each), and under load that took longer than the
        commit itself: the next batch sat queued for it (docs/BENCHMARKS.md)."""
        if task is not None:
            self._in_flight.discard(task)
        self._launch_due(asyncio.get_running_loop().time())
        self._wake.set()  # the runner recomputes its wait

    def _launch(self, writes: list[_Write], now: float) -> None:
        live: list[_Write] = []
        for w in writes:
            if w.future.done():
                continue  # its handler gave up (timeout): nothing to send
            if w.deadline <= now:
                if self._metrics is not None:
                    self._metrics.shed.inc()
                self._fail(w, overloaded("the write waited past its deadline; retry"))
                continue
            w.sent = True
            live.append(w)
        self._gauge()
        if not live:
            return
        task = asyncio.get_running_loop().create_task(self._send(live), name="batch")
        self._in_flight.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def _send(self, writes: list[_Write]) -> None:
        loop = asyncio.get_running_loop()
        if self._metrics is not None:
            self._metrics.batch_size.observe(len(writes))
        deadline_s = max(0.001, min(w.deadline for w in writes) - loop.time())
        outcome = "ok"
        try:
            answer = await self._submit([w.command for w in writes], deadline_s=deadline_s)
        except InvalidCommand as exc:
            outcome = "invalid"
            self._refuse_invalid(writes, exc)
        except Overloaded as exc:
            outcome = "overloaded"
            for w in writes:
                self._fail(w, exc)
        except NoLeader as exc:
            outcome = "no_leader"
            for w in writes:
                self._fail(w, exc)
        except CommitUnknown as exc:
            outcome = "commit_unknown"
            for w in writes:
                self._fail(w, exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
            for w in writes:
                self._fail(w, unavailable("the gateway is shutting down"))
            raise
        except Exception as exc:
            outcome = "error"
            log.exception("batch submit failed", extra={"commands": len(writes)})
            for w in writes:
                self._fail(w, exc)
        else:
            self._free_slot(asyncio.current_task())
            if len(answer.results) != len(writes):
                outcome = "error"
                log.error(
                    "batch answer does not match the batch",
                    extra={"commands": len(writes), "results": len(answer.results)},
                )
            else:
                for w, result in zip(writes, answer.results, strict=True):
                    if not w.future.done():
                        w.future.set_result((answer.index, result))
        finally:
            # No write outlives its batch unanswered, whatever happened above (those put
            # back in the queue by _refuse_invalid are no longer sent).
            for w in writes:
                if w.sent:
                    self._fail(w, CommitUnknown("the batch ended without an answer for it"))
            if self._metrics is not None:
                self._metrics.batches.labels(outcome).inc()

    def _refuse_invalid(self, writes: list[_Write], exc: InvalidCommand) -> None:
        """A node refused to decode the batch; nothing of it was applied.

        Only the named command is at fault: the others go back to the head of the queue,
        in their order, for the next batch.
        """
        index = exc.command_index
        if index is None or not 0 <= index < len(writes):
            for w in writes:
                self._fail(w, invalid_input(exc.detail))
            return
        self._fail(writes[index], invalid_input(exc.detail))
        for w in reversed(writes[:index] + writes[index + 1 :]):
            w.sent = False  # nothing of the refused batch was applied
            self._queue.appendleft(w)
        self._gauge()
        self._wake.set()

    def _expire(self, write: _Write) -> None:
        """The write's deadline and margin passed without an answer."""
        if write.sent:
            self._fail(write, CommitUnknown("no answer for a submitted batch in time"))
        else:
            self._fail(write, overloaded("the write waited past its deadline; retry"))

    def _fail(self, write: _Write, exc: BaseException) -> None:
        if not write.future.done():
            write.future.set_exception(exc)

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(len(self._queue))

