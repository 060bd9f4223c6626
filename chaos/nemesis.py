"""The nemesis: faults from a seeded schedule, applied to a live chaos cluster.

Theory of operation: ``schedule`` is pure. From a scenario's fault mix, a seed and the
run's duration it lays out a sequence of faults: when each begins, what it is, how long
it lasts and a ``pick`` that breaks ties (which follower, which gateway, which minority)
once the roles of the moment are known. The same seed always gives the same schedule.
Faults never overlap: each is healed before the next begins, after a quiet gap, so the
cluster gets the chance to recover (and the workload to retry) between them, and every
fault ends before the run's recovery tail.

``Nemesis.run`` applies the schedule with the launcher (SIGKILL, SIGSTOP/SIGCONT,
restarts, a restart under libfaketime for a clock skew), the proxy (cuts, delays) and
the nodes' slow-disk control files (``chaos.slow_disk``); against a ``flashsale up``
cluster (``chaos.target``) only the process faults, by the pids it publishes. "The
leader" is whichever node leads when the fault begins (the highest term among the nodes
that say they lead). Every fault is logged into the history at its beginning and its
end, with its targets. ``heal_all`` undoes whatever may be left: every link passing,
every disk fast, every process resumed and running.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import aiohttp

from chaos.clock import INSTALL_HINT, faketime_library, skew_env
from chaos.history import History
from chaos.proxy import ProxyControl
from chaos.slow_disk import write_delay
from chaos.topology import Topology
from cluster.client import ClusterClient

log = logging.getLogger("chaos.nemesis")

WARMUP_S = 3.0  # no fault in the first seconds: the sale gets going first
RECOVERY_TAIL_S = 6.0  # no fault in the last seconds: the cluster recovers under load
STATUS_POLL_S = 0.2
LEADER_WAIT_S = 5.0  # how long a fault aimed at the leader waits for one to exist


class FaultKind(StrEnum):
    KILL_LEADER = "kill-leader"  # SIGKILL the leader, restart it after the hold
    KILL_FOLLOWER = "kill-follower"
    KILL_GATEWAY = "kill-gateway"
    PAUSE_LEADER = "pause-leader"  # SIGSTOP longer than the election timeout, SIGCONT
    PAUSE_FOLLOWER = "pause-follower"
    PARTITION_LEADER = "partition-leader"  # cut every link of the leader
    PARTITION_MAJORITY = "partition-majority"  # a random minority cut off from the majority
    PARTITION_BRIDGE = "partition-bridge"  # one pair cut: each still sees a majority
    FULL_RESTART = "full-restart"  # SIGKILL every node at once, restart them all
    DELAY = "delay"  # every link delays each chunk by delay_ms
    SLOW_DISK = "slow-disk"  # every fsync of the leader (or of a majority) waits delay_ms
    CLOCK_SKEW = "clock-skew"  # the leader restarts with its wall clock skew_s off, and leads


# The faults that need nothing but the processes' pids (the only ones a --target run can
# make: it has no proxy between the nodes and does not start the nodes itself).
PROCESS_FAULTS = frozenset({
    FaultKind.KILL_LEADER, FaultKind.KILL_FOLLOWER, FaultKind.KILL_GATEWAY,
    FaultKind.PAUSE_LEADER, FaultKind.PAUSE_FOLLOWER, FaultKind.FULL_RESTART,
})


# How long each kind of fault lasts (seconds, drawn uniformly).
HOLD_S: dict[FaultKind, tuple[float, float]] = {
    FaultKind.KILL_LEADER: (1.0, 4.0),
    FaultKind.KILL_FOLLOWER: (1.0, 5.0),
    FaultKind.KILL_GATEWAY: (1.0, 3.0),
    FaultKind.PAUSE_LEADER: (1.5, 4.0),
    FaultKind.PAUSE_FOLLOWER: (1.5, 4.0),
    FaultKind.PARTITION_LEADER: (3.0, 8.0),
    FaultKind.PARTITION_MAJORITY: (3.0, 8.0),
    FaultKind.PARTITION_BRIDGE: (3.0, 8.0),
    FaultKind.FULL_RESTART: (0.5, 3.0),
    FaultKind.DELAY: (4.0, 8.0),
    FaultKind.SLOW_DISK: (4.0, 10.0),
    FaultKind.CLOCK_SKEW: (6.0, 12.0),
}
# Per-chunk delay of a DELAY fault, each way: longer than the leader's append period
# (30 ms in a chaos run), so heartbeats and acknowledgements arrive a period or more late.
DELAY_MS = (50, 200)
# Per-fsync delay of a SLOW_DISK fault: from a slow disk to one that stalls the tick
# (and so the heartbeats) for longer than the election timeout (300-600 ms).
DISK_DELAY_MS = (20, 500)
SKEW_S = (5, 30)  # |offset| of a CLOCK_SKEW fault's wall clock, either way
LEAD_ATTEMPTS = 6  # elections a CLOCK_SKEW fault provokes to make the skewed node lead
CATCH_UP_S = 10.0  # before each: how long the skewed node may take to catch up
CATCH_UP_SLACK = 10  # entries: caught up when at most this far behind the commit index
LEAD_DOWN_S = 1.0  # each: the leader down this long (beyond the election timeout)
LEAD_WAIT_S = 3.0  # then at most this long for a new leader before it restarts
SYNC_METRIC = "flashsale_node_journal_sync_seconds"  # node.metrics: one fdatasync each
METRICS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float  # since the start of the run
    kind: FaultKind
    hold_s: float
    pick: int  # seeded tie-breaker among the candidates of the moment
    delay_ms: int = 0  # DELAY: per chunk; SLOW_DISK: per fsync
    skew_s: int = 0  # CLOCK_SKEW: the offset of the skewed wall clock

    def to_json(self) -> dict[str, Any]:
        return {
            "at_s": self.at_s,
            "kind": self.kind.value,
            "hold_s": self.hold_s,
            "pick": self.pick,
            "delay_ms": self.delay_ms,
            "skew_s": self.skew_s,
        }


@dataclass(frozen=True, slots=True)
class FaultMix:
    """Which faults a scenario injects (weights) and the quiet gap between them."""

    weights: tuple[tuple[FaultKind, int], ...]
    gap_s: tuple[float, float] = (2.0, 6.0)

    def only(self, kinds: frozenset[FaultKind]) -> FaultMix:
        """The same mix without the faults not in ``kinds``."""
        return FaultMix(tuple((k, w) for k, w in self.weights if k in kinds), self.gap_s)


def schedule(mix: FaultMix, seed: int, duration_s: float) -> list[Fault]:
    """The faults of a run: pure, the same for the same (mix, seed, duration)."""
    rng = random.Random(f"nemesis:{seed}")
    kinds = [k for k, _ in mix.weights]
    weights = [w for _, w in mix.weights]
    faults: list[Fault] = []
    t = WARMUP_S
    end = duration_s - RECOVERY_TAIL_S
    while True:
        kind = rng.choices(kinds, weights)[0]
        lo, hi = HOLD_S[kind]
        hold_s = round(rng.uniform(lo, hi), 2)
        pick = rng.randrange(1 << 16)
        delay_ms = skew_s = 0
        if kind is FaultKind.DELAY:
            delay_ms = rng.randint(*DELAY_MS)
        elif kind is FaultKind.SLOW_DISK:
            delay_ms = rng.randint(*DISK_DELAY_MS)
        elif kind is FaultKind.CLOCK_SKEW:
            skew_s = rng.randint(*SKEW_S) * rng.choice((-1, 1))
        if t + hold_s > end:
            break
        faults.append(Fault(round(t, 2), kind, hold_s, pick, delay_ms, skew_s))
        t += hold_s + rng.uniform(*mix.gap_s)
    return faults


class Layout(Protocol):
    """Which processes a cluster has (``chaos.topology.Topology`` is one)."""

    @property
    def node_ids(self) -> list[str]: ...

    @property
    def gateway_ids(self) -> list[str]: ...

    @property
    def writer_ids(self) -> list[str]: ...


class Processes(Protocol):
    """Signals and restarts by pid: ``chaos.launcher.Launcher`` (the run's own children)
    or ``chaos.target.SupervisedProcesses`` (the children of a ``flashsale up``)."""

    @property
    def topology(self) -> Layout: ...

    @property
    def starts(self) -> dict[str, int]: ...

    def start(self, name: str, extra_env: Mapping[str, str] | None = None) -> int: ...

    def kill(self, name: str) -> None: ...

    def pause(self, name: str) -> None: ...

    def resume(self, name: str) -> None: ...

    def is_running(self, name: str) -> bool: ...

    async def wait_healthy(
        self, session: aiohttp.ClientSession, name: str, timeout_s: float = ...
    ) -> None: ...


class Nemesis:
    """Applies faults to a running chaos cluster; see the module docstring.

    ``proxy`` is None for a cluster without the run's proxy (``--target``): only the
    process faults (``PROCESS_FAULTS``) can be applied there."""

    def __init__(
        self,
        launcher: Processes,
        proxy: ProxyControl | None,
        client: ClusterClient,
        session: aiohttp.ClientSession,
        history: History,
    ) -> None:
        self.launcher = launcher
        self.layout = launcher.topology
        layout = launcher.topology
        self._topology = layout if isinstance(layout, Topology) else None
        self.proxy = proxy
        self.client = client
        self.session = session
        self.history = history
        self.applied = 0
        self.skipped = 0
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.skew_ahead_s = 0  # the largest positive clock skew applied (ledger time ahead)
        self.skews_led = 0  # clock skews during which the skewed node did lead
        self.slow_syncs = 0  # fsyncs the slowed nodes made during slow-disk faults
        self.slow_sync_s = 0.0  # and the time they took

    @property
    def topology(self) -> Topology:
        """The run's own cluster layout (links, slow-disk files): network, disk and clock
        faults need it."""
        if self._topology is None or self.proxy is None:
            raise RuntimeError("this fault needs the run's own cluster (proxy and launcher)")
        return self._topology

    async def run(self, faults: Sequence[Fault], started_at: float, duration_s: float) -> None:
        """Apply ``faults`` in order; ``started_at`` is the loop time the run began.

        Restarts take longer than the schedule can know, so faults drift later; a fault
        that would still be going on in the recovery tail of the run is skipped.
        """
        loop = asyncio.get_running_loop()
        for fault in faults:
            wait_s = started_at + fault.at_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if loop.time() + fault.hold_s > started_at + duration_s - RECOVERY_TAIL_S:
                self.skipped += 1
                continue
            try:
                await self.apply(fault)
            except Exception as exc:
                # A fault that could not be applied or undone is a finding, not a crash
                # of the run: it is logged, the cluster healed, and the run goes on.
                self.errors.append(f"{fault.kind}: {type(exc).__name__}: {exc}")
                self.history.fault("end", fault.kind.value, error=self.errors[-1])
                log.exception("fault failed", extra={"fault": fault.to_json()})
                await self.heal_all()

    async def apply(self, fault: Fault) -> None:
        kind = fault.kind
        if kind in (FaultKind.KILL_LEADER, FaultKind.KILL_FOLLOWER, FaultKind.KILL_GATEWAY):
            target = await self._target(fault)
            await self._kill_and_restart(fault, [target])
        elif kind is FaultKind.FULL_RESTART:
            # The snapshot writer goes down with the cluster, mid-transaction or not.
            await self._kill_and_restart(
                fault, [*self.layout.node_ids, *self.layout.writer_ids]
            )
        elif kind in (FaultKind.PAUSE_LEADER, FaultKind.PAUSE_FOLLOWER):
            target = await self._target(fault)
            self.launcher.pause(target)
            self._begin(fault, [target])
            await asyncio.sleep(fault.hold_s)
            self.launcher.resume(target)
            self._end(fault, [target])
        elif kind is FaultKind.DELAY:
            proxy = self._proxy()
            links = [lk.name for lk in self.topology.links]
            for name in links:
                await proxy.set(name, delay_ms=fault.delay_ms)
            self._begin(fault, self.topology.node_ids, links=links, delay_ms=fault.delay_ms)
            await asyncio.sleep(fault.hold_s)
            for name in links:
                await proxy.set(name, delay_ms=0)
            self._end(fault, self.topology.node_ids, links=links)
        elif kind is FaultKind.SLOW_DISK:
            await self._slow_disk(fault)
        elif kind is FaultKind.CLOCK_SKEW:
            if not await self._clock_skew(fault):
                return
        else:
            proxy = self._proxy()
            if kind is FaultKind.PARTITION_BRIDGE:
                names = sorted(self.topology.pairs)
                links = [names[fault.pick % len(names)]]
                targets = sorted(self.topology.pairs[links[0]])  # the pair cut apart
            else:
                minority = await self._minority(fault)
                majority = set(self.topology.node_ids) - minority
                links = self.topology.links_between(minority, majority)
                targets = sorted(minority)
            for name in links:
                await proxy.set(name, cut=True)
            self._begin(fault, targets, links=links)
            await asyncio.sleep(fault.hold_s)
            for name in links:
                await proxy.set(name, cut=False)
            self._end(fault, targets, links=links)
        self.applied += 1

    async def heal_all(self) -> None:
        """Every link passing, every disk fast, every process resumed and running (waits
        for health). A node left with a skewed clock keeps it: its restart would be one
        more fault, and the clock skew itself restarts it with a true clock."""
        if self.proxy is not None:
            await self.proxy.heal()
        if self._topology is not None:
            for node_id in self._topology.node_ids:
                write_delay(self._topology.fsync_delay_path(node_id), 0)
        layout = self.layout
        names = [*layout.node_ids, *layout.gateway_ids, *layout.writer_ids]
        for name in names:
            self.launcher.resume(name)
        down = [n for n in names if not self.launcher.is_running(n)]
        for name in down:
            self.launcher.start(name)
        for name in down:
            await self.launcher.wait_healthy(self.session, name)

    async def _slow_disk(self, fault: Fault) -> None:
        """Slow every fsync of the leader, or (odd picks) of the leader and a follower: a
        majority, so that no quorum of fast disks is left to commit with."""
        nodes = self.topology.node_ids
        leader = await self.leader()
        first = leader if leader is not None else nodes[fault.pick % len(nodes)]
        targets = [first]
        if fault.pick % 2 == 1 and len(nodes) > 1:
            others = [n for n in nodes if n != first]
            targets.append(others[(fault.pick // 2) % len(others)])
        paths = [self.topology.fsync_delay_path(n) for n in targets]
        before = [await self._sync_totals(n) for n in targets]
        for path in paths:
            write_delay(path, fault.delay_ms)
        self._begin(fault, targets, delay_ms=fault.delay_ms)
        try:
            await asyncio.sleep(fault.hold_s)
        finally:
            for path in paths:
                write_delay(path, 0)
        after = [await self._sync_totals(n) for n in targets]
        # What the slowed nodes' own journal metrics saw: the proof the fault took hold.
        seconds = syncs = 0.0
        for b, a in zip(before, after, strict=True):
            if a is not None and b is not None and a[1] >= b[1]:
                seconds += a[0] - b[0]
                syncs += a[1] - b[1]
        self.slow_syncs += int(syncs)
        self.slow_sync_s += seconds
        self._end(fault, targets, syncs=int(syncs),
                  mean_sync_ms=round(1000 * seconds / syncs, 1) if syncs else None)

    async def _sync_totals(self, node_id: str) -> tuple[float, float] | None:
        """(seconds, count) of the node's journal fsyncs so far, from its /metrics."""
        url = self.topology.config.node(node_id).api.url + "/metrics"
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT_S)
            ) as resp:
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError):
            return None
        values: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in (SYNC_METRIC + "_sum", SYNC_METRIC + "_count"):
                values[name] = float(value)
        if len(values) < 2:
            return None
        return values[SYNC_METRIC + "_sum"], values[SYNC_METRIC + "_count"]

    async def _clock_skew(self, fault: Fault) -> bool:
        """Restart the leader with its wall clock ``skew_s`` off, make it lead again (it
        stamps ledger time while it leads), then restart it with a true clock. False when
        libfaketime is missing (the fault is skipped, with a note)."""
        library = faketime_library()
        if library is None:
            self.skipped += 1
            note = f"clock-skew skipped: libfaketime is not installed ({INSTALL_HINT})"
            if note not in self.notes:
                self.notes.append(note)
                log.warning(note)
            return False
        self.topology  # noqa: B018 - raises unless this is the run's own cluster
        nodes = self.layout.node_ids
        leader = await self.leader()
        target = leader if leader is not None else nodes[fault.pick % len(nodes)]
        self.launcher.kill(target)
        self.launcher.start(target, skew_env(library, fault.skew_s))
        await self.launcher.wait_healthy(self.session, target)
        self._begin(fault, [target], skew_s=fault.skew_s)
        self.skew_ahead_s = max(self.skew_ahead_s, fault.skew_s)
        attempts = await self._make_lead(target)
        led = attempts >= 0
        self.skews_led += led
        await asyncio.sleep(fault.hold_s)
        still_led = await self.leader() == target
        self.launcher.kill(target)
        self.launcher.start(target)
        await self.launcher.wait_healthy(self.session, target)
        self._end(fault, [target], skew_s=fault.skew_s, led=led, elections=max(attempts, 0),
                  led_at_end=still_led)
        return True

    async def _make_lead(self, target: str) -> int:
        """Provoke elections until ``target`` leads, at most ``LEAD_ATTEMPTS`` times; the
        attempts it took (0: it led already; -1: it never did).

        Each attempt, once ``target`` has caught up, SIGKILLs the leader and restarts it
        ``LEAD_DOWN_S`` later: ``target`` and the other followers race for the votes.
        Nothing gentler works with pysyncobj, which has no pre-vote: a node paused past
        the election timeout (the leader, or a follower held back so that ``target``
        stands alone) starts an election the moment it resumes and unseats whoever
        won meanwhile; a restarted node comes back as a follower with a fresh timer."""
        for attempt in range(LEAD_ATTEMPTS):
            leader = await self.leader()
            if leader == target:
                return attempt
            if leader is None:
                continue
            # A node behind the leader's log cannot win a vote: let it catch up first.
            await self._caught_up(target, leader)
            self.launcher.kill(leader)
            try:
                await asyncio.sleep(LEAD_DOWN_S)
                await self.leader(LEAD_WAIT_S)
            finally:
                self.launcher.start(leader)
                await self.launcher.wait_healthy(self.session, leader)
        return LEAD_ATTEMPTS if await self.leader() == target else -1

    async def _caught_up(self, node_id: str, leader: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_S
        while loop.time() < deadline:
            statuses = await self.client.status_all()
            mine, theirs = statuses.get(node_id), statuses.get(leader)
            if mine is None or theirs is None:
                return
            # Statuses are read one after the other while entries commit: a few behind
            # is as close as a follower of a busy leader gets.
            if mine["last_applied"] >= theirs["commit_index"] - CATCH_UP_SLACK:
                return
            await asyncio.sleep(STATUS_POLL_S)

    def _proxy(self) -> ProxyControl:
        self.topology  # noqa: B018 - raises unless this is the run's own cluster
        assert self.proxy is not None
        return self.proxy

    # -- plumbing --------------------------------------------------------------------------

    def _begin(self, fault: Fault, targets: Sequence[str], **detail: Any) -> None:
        self.history.fault("begin", fault.kind.value, targets=list(targets), **detail,
                           hold_s=fault.hold_s)
        log.info("fault begins", extra={"fault": fault.kind.value, "targets": list(targets)})

    def _end(self, fault: Fault, targets: Sequence[str], **detail: Any) -> None:
        self.history.fault("end", fault.kind.value, targets=list(targets), **detail)

    async def _kill_and_restart(self, fault: Fault, targets: Sequence[str]) -> None:
        for name in targets:  # back to back: "at once" for a full restart
            self.launcher.kill(name)
        self._begin(fault, targets)
        await asyncio.sleep(fault.hold_s)
        for name in targets:
            self.launcher.start(name)
        for name in targets:
            await self.launcher.wait_healthy(self.session, name)
        self._end(fault, targets)

    async def leader(self, wait_s: float = LEADER_WAIT_S) -> str | None:
        """The node leading now (highest term among those that say so), or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            statuses = await self.client.status_all()
            leaders = [
                (s["term"], node_id)
                for node_id, s in statuses.items()
                if s is not None and s.get("role") == "leader"
            ]
            if leaders:
                return max(leaders)[1]
            if loop.time() > deadline:
                return None
            await asyncio.sleep(STATUS_POLL_S)

    async def _target(self, fault: Fault) -> str:
        if fault.kind is FaultKind.KILL_GATEWAY:
            gateways = self.layout.gateway_ids
            return gateways[fault.pick % len(gateways)]
        nodes = self.layout.node_ids
        leader = await self.leader()
        if fault.kind in (FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER):
            return leader if leader is not None else nodes[fault.pick % len(nodes)]
        followers = [n for n in nodes if n != leader]
        return followers[fault.pick % len(followers)]

    async def _minority(self, fault: Fault) -> set[str]:
        nodes = self.topology.node_ids
        if fault.kind is FaultKind.PARTITION_LEADER:
            leader = await self.leader()
            return {leader if leader is not None else nodes[fault.pick % len(nodes)]}
        size = max(1, (len(nodes) - 1) // 2)
        shuffled = sorted(nodes)
        random.Random(fault.pick).shuffle(shuffled)
        return set(shuffled[:size])
