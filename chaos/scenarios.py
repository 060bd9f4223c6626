"""The chaos scenarios: which faults each injects, all with the same sale.

Every scenario runs the same workload (``chaos.workload.WorkloadPlan``: two products of
30 and 40 units, per-shopper limits of 3 and 2, holds of 3 s, payments due in 6 s) on a
3-node cluster with 2 gateways, and differs only in its fault mix. A run is repeatable
by seed: the schedule of faults and every choice of the shoppers derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.nemesis import FaultKind, FaultMix
from chaos.workload import WorkloadPlan

K = FaultKind


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    mix: FaultMix
    plan: WorkloadPlan = field(default_factory=WorkloadPlan)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "leader-kill",
            "SIGKILL the leader, restart it 1-4 s later",
            FaultMix(((K.KILL_LEADER, 1),)),
        ),
        Scenario(
            "follower-kill",
            "SIGKILL a follower, restart it 1-5 s later",
            FaultMix(((K.KILL_FOLLOWER, 1),)),
        ),
        Scenario(
            "pause",
            "SIGSTOP the leader or a follower for 1.5-4 s (beyond the election timeout)",
            FaultMix(((K.PAUSE_LEADER, 1), (K.PAUSE_FOLLOWER, 1))),
        ),
        Scenario(
            "partition-leader",
            "cut every Raft link of the leader for 3-8 s",
            FaultMix(((K.PARTITION_LEADER, 1),)),
        ),
        Scenario(
            "partition-majority",
            "split the cluster into a random minority and majority, or cut one pair apart "
            "(a bridge), for 3-8 s",
            FaultMix(((K.PARTITION_MAJORITY, 2), (K.PARTITION_BRIDGE, 1))),
        ),
        Scenario(
            "full-restart",
            "SIGKILL every node at once, restart them all 0.5-3 s later",
            FaultMix(((K.FULL_RESTART, 1),), gap_s=(4.0, 8.0)),
        ),
        Scenario(
            "delay",
            "delay every Raft message 50-200 ms each way (the leader appends every 30 ms) "
            "for 4-8 s",
            FaultMix(((K.DELAY, 1),)),
        ),
        Scenario(
            "slow-disk",
            "every fsync of the leader, or of the leader and a follower, waits 20-500 ms, "
            "for 4-10 s",
            FaultMix(((K.SLOW_DISK, 1),)),
        ),
        Scenario(
            "clock-skew",
            "restart the leader with its wall clock 5-30 s ahead or behind (libfaketime), "
            "make it lead again for 6-12 s, restart it with a true clock",
            FaultMix(((K.CLOCK_SKEW, 1),), gap_s=(3.0, 6.0)),
        ),
        Scenario(
            "mixed",
            "all of the above, plus gateway kills",
            FaultMix(
                (
                    (K.KILL_LEADER, 3),
                    (K.KILL_FOLLOWER, 2),
                    (K.KILL_GATEWAY, 2),
                    (K.PAUSE_LEADER, 2),
                    (K.PAUSE_FOLLOWER, 1),
                    (K.PARTITION_LEADER, 2),
                    (K.PARTITION_MAJORITY, 2),
                    (K.PARTITION_BRIDGE, 1),
                    (K.FULL_RESTART, 2),
                    (K.DELAY, 2),
                    (K.SLOW_DISK, 2),
                    (K.CLOCK_SKEW, 1),
                )
            ),
        ),
    )
}
