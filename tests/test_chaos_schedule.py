"""Chaos runs are repeatable by seed, and the cluster layout routes every Raft pair
through exactly one proxy link."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from chaos.nemesis import (
    DELAY_MS,
    DISK_DELAY_MS,
    HOLD_S,
    PROCESS_FAULTS,
    RECOVERY_TAIL_S,
    SKEW_S,
    WARMUP_S,
    FaultKind,
    schedule,
)
from chaos.routed_node import parse_routes
from chaos.scenarios import SCENARIOS
from chaos.topology import build_topology


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_schedule_is_a_function_of_the_seed(name: str) -> None:
    mix = SCENARIOS[name].mix
    assert schedule(mix, 7, 180) == schedule(mix, 7, 180)
    assert schedule(mix, 7, 180) != schedule(mix, 8, 180)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_faults_stay_inside_the_run_never_overlap_and_use_the_mix(name: str) -> None:
    mix = SCENARIOS[name].mix
    allowed = {k for k, _ in mix.weights}
    for seed in range(20):
        faults = schedule(mix, seed, 120)
        assert faults, "a two-minute run injects faults"
        assert faults[0].at_s >= WARMUP_S
        for a, b in itertools.pairwise(faults):
            assert a.at_s + a.hold_s < b.at_s
        assert faults[-1].at_s + faults[-1].hold_s <= 120 - RECOVERY_TAIL_S
        for f in faults:
            assert f.kind in allowed
            lo, hi = HOLD_S[f.kind]
            assert lo <= f.hold_s <= hi
            assert (f.delay_ms > 0) == (f.kind in (FaultKind.DELAY, FaultKind.SLOW_DISK))
            assert (f.skew_s != 0) == (f.kind is FaultKind.CLOCK_SKEW)
            if f.kind is FaultKind.DELAY:
                assert DELAY_MS[0] <= f.delay_ms <= DELAY_MS[1]
            if f.kind is FaultKind.SLOW_DISK:
                assert DISK_DELAY_MS[0] <= f.delay_ms <= DISK_DELAY_MS[1]
            if f.kind is FaultKind.CLOCK_SKEW:
                assert SKEW_S[0] <= abs(f.skew_s) <= SKEW_S[1]


def test_delays_outlast_the_append_period() -> None:
    # cluster.toml and the chaos run append every 30 ms: a delay must make beats late.
    assert DELAY_MS[0] > 30


def test_clock_skews_go_both_ways() -> None:
    skews = [f.skew_s for seed in range(20)
             for f in schedule(SCENARIOS["clock-skew"].mix, seed, 120)]
    assert min(skews) < 0 < max(skews)


def test_a_target_run_keeps_only_the_faults_made_by_pid() -> None:
    mixed = SCENARIOS["mixed"].mix.only(PROCESS_FAULTS)
    assert {k for k, _ in mixed.weights} == PROCESS_FAULTS
    for name in ("partition-leader", "partition-majority", "delay", "slow-disk", "clock-skew"):
        assert SCENARIOS[name].mix.only(PROCESS_FAULTS).weights == ()


def test_pauses_outlast_the_election_timeout() -> None:
    # cluster.toml's election timeout is at most 600 ms: a pause must make it fire.
    assert HOLD_S[FaultKind.PAUSE_LEADER][0] > 0.6
    assert HOLD_S[FaultKind.PAUSE_FOLLOWER][0] > 0.6


def test_mixed_covers_every_fault_kind() -> None:
    assert {k for k, _ in SCENARIOS["mixed"].mix.weights} == set(FaultKind)


@pytest.mark.parametrize("n_nodes", [3, 5])
def test_every_pair_of_nodes_crosses_exactly_one_link(tmp_path: Path, n_nodes: int) -> None:
    topo = build_topology(tmp_path, n_nodes=n_nodes, n_gateways=2)
    raft = {n.id: str(n.raft) for n in topo.config.nodes}
    assert len(topo.links) == n_nodes * (n_nodes - 1) // 2
    assert sorted(map(sorted, topo.pairs.values())) == sorted(
        sorted((a, b)) for a in raft for b in raft if a < b
    )
    for link in topo.links:
        a, b = sorted(topo.pairs[link.name], key=lambda n: raft[n])
        # pysyncobj: the greater address dials; its route goes through the link.
        assert str(link.target) == raft[a]
        assert topo.routes[b][raft[a]] == str(link.listen)
        assert raft[a] not in topo.routes[a]
    assert sum(len(r) for r in topo.routes.values()) == len(topo.links)
    saved = json.loads((tmp_path / "links.json").read_text())
    assert [s["name"] for s in saved] == [lk.name for lk in topo.links]
    for node_id, routes in topo.routes.items():
        assert parse_routes(json.dumps(dict(routes))) == {
            peer: (via.rsplit(":", 1)[0], int(via.rsplit(":", 1)[1]))
            for peer, via in routes.items()
        }, node_id


def test_isolating_a_node_cuts_only_its_links(tmp_path: Path) -> None:
    topo = build_topology(tmp_path)
    assert sorted(topo.links_of("n1")) == sorted(
        name for name, pair in topo.pairs.items() if "n1" in pair
    )
    assert sorted(topo.links_between({"n1"}, {"n2", "n3"})) == sorted(topo.links_of("n1"))
    assert topo.links_between({"n1", "n2"}, {"n3"}) == topo.links_between({"n3"}, {"n1", "n2"})


def test_routes_are_parsed_strictly() -> None:
    with pytest.raises(ValueError):
        parse_routes("[]")
    with pytest.raises(ValueError):
        parse_routes('{"127.0.0.1:1": "nowhere"}')
