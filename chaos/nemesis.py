"""The nemesis: faults from a seeded schedule, applied to a live chaos cluster.

Theory of operation: ``schedule`` is pure. From a scenario's fault mix, a seed and the
run's duration it lays out a sequence of faults: when each begins, what it is, how long
it lasts and a ``pick`` that breaks ties (which follower, which gateway, which minority)
once the roles of the moment are known. The same seed always gives the same schedule.
Faults never overlap: each is healed before the next begins, after a quiet gap, so the
cluster gets the chance to recover (and the workload to retry) between them, and every
fault ends before the run's recovery tail.

``Nemesis.run`` applies the schedule with the launcher (SIGKILL, SIGSTOP/SIGCONT,
restarts) and the proxy (cuts, delays); "the leader" is whichever node leads when the
fault begins (the highest term among the nodes that say they lead). Every fault is
logged into the history at its beginning and its end, with its targets.
``heal_all`` undoes whatever may be left: every link passing, every process resumed and
running.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from chaos.history import History
from chaos.launcher import Launcher
from chaos.proxy import ProxyControl
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
}
DELAY_MS = (20, 150)  # per-chunk delay of a DELAY fault


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float  # since the start of the run
    kind: FaultKind
    hold_s: float
    pick: int  # seeded tie-breaker among the candidates of the moment
    delay_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "at_s": self.at_s,
            "kind": self.kind.value,
            "hold_s": self.hold_s,
            "pick": self.pick,
            "delay_ms": self.delay_ms,
        }


@dataclass(frozen=True, slots=True)
class FaultMix:
    """Which faults a scenario injects (weights) and the quiet gap between them."""

    weights: tuple[tuple[FaultKind, int], ...]
    gap_s: tuple[float, float] = (2.0, 6.0)


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
        delay_ms = rng.randint(*DELAY_MS) if kind is FaultKind.DELAY else 0
        if t + hold_s > end:
            break
        faults.append(Fault(round(t, 2), kind, hold_s, pick, delay_ms))
        t += hold_s + rng.uniform(*mix.gap_s)
    return faults


class Nemesis:
    """Applies faults to a running chaos cluster; see the module docstring."""

    def __init__(
        self,
        launcher: Launcher,
        proxy: ProxyControl,
        client: ClusterClient,
        session: aiohttp.ClientSession,
        history: History,
    ) -> None:
        self.launcher = launcher
        self.topology = launcher.topology
        self.proxy = proxy
        self.client = client
        self.session = session
        self.history = history
        self.applied = 0
        self.skipped = 0
        self.errors: list[str] = []

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
                fault, [*self.topology.node_ids, *self.topology.writer_ids]
            )
        elif kind in (FaultKind.PAUSE_LEADER, FaultKind.PAUSE_FOLLOWER):
            target = await self._target(fault)
            self.launcher.pause(target)
            self._begin(fault, [target])
            await asyncio.sleep(fault.hold_s)
            self.launcher.resume(target)
            self._end(fault, [target])
        elif kind is FaultKind.DELAY:
            links = [lk.name for lk in self.topology.links]
            for name in links:
                await self.proxy.set(name, delay_ms=fault.delay_ms)
            self._begin(fault, self.topology.node_ids, links=links, delay_ms=fault.delay_ms)
            await asyncio.sleep(fault.hold_s)
            for name in links:
                await self.proxy.set(name, delay_ms=0)
            self._end(fault, self.topology.node_ids, links=links)
        else:
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
                await self.proxy.set(name, cut=True)
            self._begin(fault, targets, links=links)
            await asyncio.sleep(fault.hold_s)
            for name in links:
                await self.proxy.set(name, cut=False)
            self._end(fault, targets, links=links)
        self.applied += 1

    async def heal_all(self) -> None:
        """Every link passing, every process resumed and running (waits for health)."""
        await self.proxy.heal()
        names = [*self.topology.node_ids, *self.topology.gateway_ids, *self.topology.writer_ids]
        for name in names:
            self.launcher.resume(name)
        down = [n for n in names if not self.launcher.is_running(n)]
        for name in down:
            self.launcher.start(name)
        for name in down:
            await self.launcher.wait_healthy(self.session, name)

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
            gateways = self.topology.gateway_ids
            return gateways[fault.pick % len(gateways)]
        nodes = self.topology.node_ids
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
