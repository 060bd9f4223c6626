"""Short chaos runs of the delay, slow-disk and clock-skew scenarios, end to end.

Each starts its own cluster (proxy, 3 routed nodes, 2 gateways, the snapshot writer),
sells for 22 s while one kind of fault is applied, and must end with every promise
kept. Besides the verdict, each checks that its fault really took hold: the delay is
longer than the leader's append period, the slowed nodes' own fsync metrics show the
delay, and the skewed node stamped ledger time with its skewed clock while it led.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from chaos.clock import INSTALL_HINT, faketime_library
from chaos.nemesis import FaultKind, schedule
from chaos.run import RAFT, run_chaos
from chaos.scenarios import SCENARIOS

DURATION_S = 22
SEEDS = {"delay": 2, "slow-disk": 1, "clock-skew": 1}


def test_each_short_schedule_has_its_fault() -> None:
    for name, seed in SEEDS.items():
        faults = schedule(SCENARIOS[name].mix, seed, DURATION_S)
        assert faults and {f.kind.value for f in faults} == {name}
    delay = schedule(SCENARIOS["delay"].mix, SEEDS["delay"], DURATION_S)
    assert all(f.delay_ms > RAFT["append_entries_period_ms"] for f in delay)
    (skew,) = schedule(SCENARIOS["clock-skew"].mix, SEEDS["clock-skew"], DURATION_S)
    assert skew.kind is FaultKind.CLOCK_SKEW and skew.skew_s >= 5, "runs ahead: a jump"


def run(name: str, tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = io.StringIO()
    code = run_chaos(name, DURATION_S, SEEDS[name], tmp_path / "run", say=out)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert code == 0, out.getvalue()
    counts = report["verdict"]["counts"]
    assert counts["violations"] == 0 and report["nemesis"]["errors"] == []
    assert counts["acknowledged"] > 50
    assert counts["store_index"] == counts["last_index"]
    faults = [
        json.loads(line)
        for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()
        if '"type":"fault"' in line
    ]
    assert counts["faults"] >= 1 and faults
    return report, faults


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_delayed_raft_messages_lose_nothing(tmp_path: Path) -> None:
    _, faults = run("delay", tmp_path)
    begun = [f for f in faults if f["phase"] == "begin"]
    assert all(f["op"] == "delay" and f["delay_ms"] >= 50 for f in begun)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_a_slow_disk_on_the_leader_loses_nothing(tmp_path: Path) -> None:
    report, faults = run("slow-disk", tmp_path)
    (begin,) = [f for f in faults if f["phase"] == "begin"]
    (end,) = [f for f in faults if f["phase"] == "end"]
    assert begin["op"] == "slow-disk" and len(begin["targets"]) >= 1
    # The slowed nodes' journal metrics: they did sync during the fault, and slowly. (The
    # nodes read the control file at most every 100 ms, so the first and last fsyncs of
    # the window the nemesis measures may be fast ones: half the delay, not all of it,
    # where an unslowed fsync takes a few milliseconds.)
    assert end["syncs"] > 0
    assert end["mean_sync_ms"] >= begin["delay_ms"] / 2
    assert report["nemesis"]["slow_syncs"] == end["syncs"]


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_a_leader_whose_clock_runs_ahead_keeps_expiry_exact_in_ledger_time(
    tmp_path: Path,
) -> None:
    if faketime_library() is None:
        pytest.skip(f"libfaketime is not installed: {INSTALL_HINT}")
    report, faults = run("clock-skew", tmp_path)
    (begin,) = [f for f in faults if f["phase"] == "begin"]
    (end,) = [f for f in faults if f["phase"] == "end"]
    skew_ms = begin["skew_s"] * 1000
    (target,) = begin["targets"]
    # Restarted twice: under libfaketime, then with a true clock.
    assert report["nemesis"]["process_starts"][target] == 3
    if end["led"]:
        # The skewed leader stamped entries with its clock: ledger time jumped ahead by
        # about the skew (holds older than that expired at once, on time in ledger time).
        feed = [json.loads(line) for line in
                (tmp_path / "run" / "feed.jsonl").read_text().splitlines()]
        ats = [e["at_ms"] for e in feed]
        jumps = [b - a for a, b in itertools.pairwise(ats)]
        assert max(jumps) >= skew_ms - 3000
        assert ats == sorted(ats), "ledger time never goes back"
