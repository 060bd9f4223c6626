"""A short chaos run end to end: real nodes, gateways and proxies, faults, a verdict.

Seed 46 of ``mixed`` schedules, in 35 s, a partition of the leader, two kills of every
node at once and delayed Raft messages (the last is skipped when restarts made the
schedule drift into the recovery tail); the shoppers keep buying through all of it and
the checker must find every promise kept, in the log and in the order-snapshot store
(whose writer dies with the cluster in the full restart). The run starts and stops its own
processes (and SIGKILLs every one of them by pid on the way out).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from chaos.nemesis import FaultKind, schedule
from chaos.run import recheck, run_chaos
from chaos.scenarios import SCENARIOS

SEED = 46
DURATION_S = 35


def test_the_short_schedule_has_the_faults_this_test_promises() -> None:
    kinds = {f.kind for f in schedule(SCENARIOS["mixed"].mix, SEED, DURATION_S)}
    assert {FaultKind.FULL_RESTART, FaultKind.PARTITION_LEADER} <= kinds
    assert schedule(SCENARIOS["mixed"].mix, SEED, DURATION_S) == schedule(
        SCENARIOS["mixed"].mix, SEED, DURATION_S
    )


@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_a_short_mixed_run_keeps_every_promise(tmp_path: Path) -> None:
    out = io.StringIO()
    code = run_chaos("mixed", DURATION_S, SEED, tmp_path / "run", say=out)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    verdict = report["verdict"]
    assert code == 0, out.getvalue()
    assert verdict["valid"] and verdict["counts"]["violations"] == 0
    counts = verdict["counts"]
    assert counts["faults"] >= 3, report["nemesis"]
    assert counts["acknowledged"] > 50
    assert counts["holds_placed"] > 50
    assert report["nemesis"]["errors"] == []
    # The order-snapshot writer ran through it all (killed with the cluster) and its store
    # was judged: at the final ledger index, one row per order of the log.
    assert counts["store_index"] == counts["last_index"]
    assert counts["store_orders"] == counts["orders_placed"] > 0
    assert report["nemesis"]["process_starts"]["snapshots"] >= 1
    # Every node was killed at least once and came back.
    assert all(report["nemesis"]["process_starts"][n] >= 2 for n in ("n1", "n2", "n3"))
    # The saved run judges the same way again.
    assert recheck(tmp_path / "run").ok
