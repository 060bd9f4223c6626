"""Load shedding at the gateway's door: a cap on the requests one process handles at once.

Theory of operation: past what a gateway can serve, every extra request it takes on
makes all of them slower (queues grow, p99 grows with them, memory too) until clients
time out and retry, which is more load. So the gateway counts the requests it is
handling and refuses one more beyond its caps *before doing any work for it* (no body
read, no token check, no bot defence, no cluster call): 503 ``overloaded`` with
Retry-After, which costs it a header parse and a small answer. A refused client retries
later; an accepted one does not wait behind work the gateway could not finish anyway.
(What arrives faster than the process can even parse waits in TCP buffers, out of its
sight: that takes more gateway processes, docs/BENCHMARKS.md "Overload".)

Two caps (``[gateway]`` in cluster.toml): ``max_in_flight_requests`` for everything
counted, and ``max_in_flight_writes`` (smaller) for writes: POST, PUT, PATCH and DELETE,
which wait for a Raft commit and cost the cluster. When writes pile up, they hit their
own cap while reads (mostly answered from the edge cache in well under a millisecond)
still find room under the total. ``/payment`` has a third cap of its own,
``max_in_flight_payments``, outside the total: a payment spends seconds waiting on its
provider while costing the gateway almost nothing. Never counted nor refused:
``/healthz``, ``/readyz``, ``/metrics`` (load balancers and monitoring must see a busy
gateway as alive and busy, not as dead), the operators' ``/internal/`` API, and the
live-stock stream ``/events/inventory``, which lives for minutes and has its own cap
(gateway.inventory_stream.MAX_EVENT_STREAMS).

The write cap adapts to how fast writes actually complete (``write_latency_target_ms``):
a fixed number of writes in flight means a fixed wait only on a machine of a known speed,
and a gateway whose cores are shared, or whose cluster is slow, would queue for seconds
behind 256 writes. So every ``target`` ms the gateway looks at the writes answered in
that interval and moves its effective cap (``next_write_limit``, pure) by the ratio of
the target to their 90th-percentile time: over the target it shrinks (at most halving
per interval), under it it grows (at most 25 % per interval), always between
``MIN_WRITE_LIMIT`` and ``max_in_flight_writes``; an interval in which writes were in
flight and none was answered halves it. By Little's law the cap settles where writes
wait about the target, whatever the machine. When the time comes from the process's own
CPU rather than from its queue, the floor keeps writes (the requests a sale is about)
flowing. ``write_latency_target_ms = 0`` keeps the fixed cap.

The handling time is not all a shopper waits: a request whose bytes arrive while the
event loop is busy (the process's core saturated, or taken by other processes on shared
cores) waits in the socket buffer until the loop gets round to it, and no handler timer
sees that. The loop's lag measures it: a timer due every ``loop_lag_tick_ms`` (25 ms)
notes how late it fires (``LoopLag``; ``flashsale_gateway_event_loop_lag_seconds``).
The write cap's latency is therefore the interval's worst lag (a tick still overdue
counts) plus the p90 handling time: when the machine is starved the cap shrinks too,
fewer writes are taken on, and the work they would have cost the gateway and the Raft
nodes sharing its cores is not done, while a refusal is cheap. The total cap does not
follow the lag: a read answered from the edge cache enters and leaves without yielding
to the loop, so reads in flight stay near zero and a smaller total would refuse nothing
(and refusing a read saves about what answering it costs). ``loop_lag_tick_ms = 0``:
no probe, the cap sees handling time only.

Behind these caps, the other bounds still hold: the batcher's ``queue_limit`` and each
write's ``request_deadline_ms`` (gateway.batcher), and per-client rate limits answered
429 by the bot defences (gateway.defences). ``request_kind`` and ``InFlightLimits`` are
pure, and so are ``next_write_limit`` and ``loop_lag``; ``InFlight`` keeps the counts;
the shells are gateway.front_door (around every route's handler) and ``LoopLag``'s
timer (started by gateway.server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from cluster.config import GatewaySettings
from gateway.metrics import GatewayMetrics
from gateway.problems import overloaded

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Kind = Literal["read", "write", "payment"]

NEVER_SHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Long-lived or operator-only: bounded elsewhere, never counted here.
UNCOUNTED_PATHS = frozenset({"/events/inventory"})
UNCOUNTED_PREFIXES = ("/internal/",)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Posts that commit nothing and cost about what a read costs (a queue ticket, a guest
# token): counted as reads, so a surge at the opening is not refused by the write cap,
# which would throw away the arrival order the waiting room exists to keep.
READ_LIKE_POSTS = frozenset({"/queue", "/session/guest"})
# A payment waits seconds on its provider, not on the cluster: it has a cap of its own
# (max_in_flight_payments), outside the total and the adaptive write cap, which would
# read a provider's 2 s as overload and starve payments (333/s x 2 s = 666 in flight).
PAYMENT_PATH = "/payment"
MAX_SAMPLES = 10_000  # write durations kept per interval (the rest are not needed)


def request_kind(method: str, path: str) -> Kind | None:
    """``read`` or ``write`` for a counted request; None for one never refused."""
    if path in NEVER_SHED_PATHS or path in UNCOUNTED_PATHS or path.startswith(UNCOUNTED_PREFIXES):
        return None
    if method in READ_METHODS or path in READ_LIKE_POSTS:
        return "read"
    return "payment" if path == PAYMENT_PATH else "write"


@dataclass(frozen=True, slots=True)
class InFlightLimits:
    """The caps; ``admits`` is the whole decision, without I/O."""

    max_requests: int = 1024
    max_writes: int = 256
    max_payments: int = 2048

    def __post_init__(self) -> None:
        if self.max_writes < 1:
            raise ValueError(f"max_writes={self.max_writes}: expected >= 1")
        if self.max_payments < 1:
            raise ValueError(f"max_payments={self.max_payments}: expected >= 1")
        if self.max_requests <= self.max_writes:
            raise ValueError(
                f"max_requests={self.max_requests} must exceed max_writes={self.max_writes}"
            )

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> InFlightLimits:
        return cls(
            settings.max_in_flight_requests,
            settings.max_in_flight_writes,
            settings.max_in_flight_payments,
        )

    def admits(self, kind: Kind, reads: int, writes: int, payments: int = 0) -> bool:
        """Whether one more ``kind`` request may start while ``reads`` + ``writes`` (and,
        apart, ``payments``) run."""
        if kind == "payment":
            return payments < self.max_payments
        if reads + writes >= self.max_requests:
            return False
        return kind == "read" or writes < self.max_writes


MIN_WRITE_LIMIT = 32  # the adaptive write cap never goes below this (writes keep flowing)
MAX_GROWTH = 1.25  # per interval, when writes are answered faster than the target
MIN_SHRINK = 0.5  # per interval, when they are slower (or none was answered)


def next_write_limit(
    limit: float,
    durations_s: list[float],
    target_s: float,
    *,
    stalled: bool,
    ceiling: int,
    lag_s: float = 0.0,
) -> float:
    """The write cap for the next interval, from the writes answered in the last one.

    ``durations_s``: their handling times; ``stalled``: writes were in flight all
    interval and none was answered; ``lag_s``: the event loop's worst lag in it, which a
    shopper waits before any handler runs. Pure.
    """
    if stalled:
        factor = MIN_SHRINK
    elif not durations_s:
        return limit  # idle: nothing learned (and no write to spare the machine)
    else:
        ordered = sorted(durations_s)
        p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
        factor = min(MAX_GROWTH, max(MIN_SHRINK, target_s / max(p90 + lag_s, 1e-6)))
    return min(float(ceiling), max(float(MIN_WRITE_LIMIT), limit * factor))


# Up to 5 s: a loop that late is a gateway that has stopped serving anyone in time.
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def loop_lag(due: float, now: float) -> float:
    """How late a timer due at ``due`` runs at ``now``, in the same clock; never negative
    (libuv rounds timers to the millisecond, so one may fire a little early). Pure."""
    return max(0.0, now - due)


class LoopLag:
    """The event loop's lag, from a timer due every ``tick_s`` (see the module docstring).

    ``fired`` and ``worst_since`` take the time as arguments (tests drive them); ``start``
    and ``context`` are the shell that runs the timer on the loop.
    """

    def __init__(
        self,
        tick_s: float,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tick_s = tick_s
        self.due: float | None = None  # when the pending tick should run (clock time)
        self.worst = 0.0  # the worst lag since the last ``worst_since``
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._histogram = Histogram(
            "flashsale_gateway_event_loop_lag_seconds",
            f"How late a timer due every {tick_s * 1000:g} ms ran on the gateway's event loop"
            " (time a request's bytes can wait before the gateway reads them)",
            buckets=LAG_BUCKETS_S,
            registry=metrics.registry,
        )

    def fired(self, now: float) -> float:
        """The pending tick ran at ``now``: its lag, noted."""
        lag = loop_lag(self.due, now) if self.due is not None else 0.0
        self.worst = max(self.worst, lag)
        self._histogram.observe(lag)
        return lag

    def worst_since(self, now: float) -> float:
        """The worst lag since the last call (a tick overdue at ``now`` counts: a loop
        late by more than an interval must not read as idle), then starts over."""
        worst = self.worst
        if self.due is not None:
            worst = max(worst, loop_lag(self.due, now))
        self.worst = 0.0
        return worst

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the timer on ``loop`` until ``stop``."""
        self.due = self._clock() + self.tick_s
        self._handle = loop.call_later(self.tick_s, self._tick, loop)

    def stop(self) -> None:
        """Cancel the pending tick."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self.due = None

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: the timer runs while the application does."""
        self.start(asyncio.get_running_loop())
        yield
        self.stop()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A plain callback rather than a task with sleep: 40 a second must cost nothing.
        self.fired(self._clock())
        self.start(loop)


class InFlight:
    """Counts of the requests being handled; event-loop only, so no locking."""

    def __init__(
        self,
        limits: InFlightLimits,
        metrics: GatewayMetrics,
        *,
        write_latency_target_ms: int = 0,
        lag: LoopLag | None = None,
    ) -> None:
        self.limits = limits
        self.lag = lag
        self.reads = 0
        self.writes = 0
        self.payments = 0
        self.target_s = write_latency_target_ms / 1000
        self.write_limit = float(limits.max_writes)  # the adaptive cap (<= max_writes)
        self._window_start: float | None = None
        self._durations: list[float] = []
        self._limit_gauge = Gauge(
            "flashsale_gateway_write_limit",
            "Writes this gateway takes on at once now (adapted to write_latency_target_ms)",
            registry=metrics.registry,
        )
        self._limit_gauge.set(self.write_limit)
        # The in-flight gauge is read from the counts above when /metrics is scraped
        # (``collect``): a labelled Gauge's inc/dec on every request cost more than the
        # counting itself.
        metrics.registry.register(self)
        shed = Counter(
            "flashsale_gateway_requests_shed",
            "Requests refused at the door (503 overloaded) by the in-flight caps, by kind",
            ["kind"],
            registry=metrics.registry,
        )
        # Children resolved once: ``labels()`` per refusal would make shedding dearer.
        self._shed = {k: shed.labels(kind=k) for k in ("read", "write", "payment")}

    def collect(self) -> Iterator[Metric]:
        """``flashsale_gateway_in_flight_requests`` now (Prometheus collector protocol)."""
        gauge = GaugeMetricFamily(
            "flashsale_gateway_in_flight_requests",
            "Requests being handled, by kind (read, write, payment); health and metrics not"
            " counted",
            labels=["kind"],
        )
        for kind, n in (("read", self.reads), ("write", self.writes), ("payment", self.payments)):
            gauge.add_metric([kind], n)
        yield gauge

    def try_enter(self, kind: Kind, now: float = 0.0) -> bool:
        """Count one more request of ``kind``; False (counted as shed) when over a cap.
        ``now``: a monotonic time in seconds (the adaptive write cap's clock)."""
        self._adapt(now)
        over_writes = kind == "write" and self.writes >= int(self.write_limit)
        if over_writes or not self.limits.admits(kind, self.reads, self.writes, self.payments):
            self._shed[kind].inc()
            return False
        if kind == "read":
            self.reads += 1
        elif kind == "payment":
            self.payments += 1
        else:
            self.writes += 1
        return True

    def leave(self, kind: Kind, duration_s: float = 0.0) -> None:
        """A request of ``kind`` is answered (or failed) after ``duration_s``."""
        if kind == "read":
            self.reads -= 1
        elif kind == "payment":
            self.payments -= 1
        else:
            self.writes -= 1
            if self.target_s > 0 and len(self._durations) < MAX_SAMPLES:
                self._durations.append(duration_s)

    def _adapt(self, now: float) -> None:
        """Once per target interval: the next write cap (see the module docstring)."""
        if self.target_s <= 0:
            return
        if self._window_start is None:
            self._window_start = now
            return
        if now - self._window_start < self.target_s:
            return
        stalled = not self._durations and self.writes > 0
        self.write_limit = next_write_limit(
            self.write_limit,
            self._durations,
            self.target_s,
            stalled=stalled,
            ceiling=self.limits.max_writes,
            lag_s=self.lag.worst_since(now) if self.lag is not None else 0.0,
        )
        self._limit_gauge.set(self.write_limit)
        self._durations = []
        self._window_start = now

    def refusal(self, kind: Kind, path: str) -> web.Response:
        """The 503 ``overloaded`` answer to a request ``try_enter`` refused."""
        cap, what = {
            "write": (self.limits.max_writes, "writes"),
            "payment": (self.limits.max_payments, "payments"),
        }.get(kind, (self.limits.max_requests, "requests"))
        # Answered rather than raised: a refusal should cost as little as it can.
        return overloaded(
            f"this gateway is handling its maximum of {cap} {what}; retry shortly"
        ).response(path)
