"""``flashsale chaos run --target``: the sale and the checker against a cluster someone else
runs. The test starts an ordinary cluster (3 nodes, 2 gateways) itself, as an operator
would, points a target run at its cluster.toml and checks that the run sold through the
gateways, judged the whole log, started and stopped nothing, and injected no fault.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from chaos.run import recheck, run_chaos
from tests.support.cluster import LocalCluster


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_a_target_run_sells_and_judges_a_running_cluster_without_touching_it(
    local_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = local_cluster(
        n_nodes=3, gateways=2, ledger={"payment_ttl_s": 6},
        gateway_settings={"request_deadline_ms": 2500},
    )
    cluster.start()
    pids = {name: proc.pid for name, proc in cluster.procs.items()}
    out = io.StringIO()
    code = run_chaos("mixed", 6, 11, tmp_path / "run", say=out, target=cluster.config_path)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    verdict = report["verdict"]
    assert code == 0, out.getvalue()
    assert report["scenario"] == "target" and report["schedule"] == []
    assert verdict["counts"]["faults"] == 0 and verdict["counts"]["violations"] == 0
    assert verdict["counts"]["acknowledged"] > 10
    assert report["nemesis"]["process_starts"] == {}
    assert any("target mode" in note for note in verdict["notes"])
    # Every process of the cluster is the one the operator started, still running.
    assert {name: proc.pid for name, proc in cluster.procs.items()} == pids
    assert all(cluster.is_running(name) for name in pids)
    # The run's products carry its tag, so a second run never meets the first one's.
    feed = (tmp_path / "run" / "feed.jsonl").read_text(encoding="utf-8").splitlines()
    created = [json.loads(line) for line in feed if '"product_created"' in line]
    assert {ev["product_id"] for ev in created} == {
        f"lamp-{report['tag'][:-1]}", f"kettle-{report['tag'][:-1]}"
    }
    assert recheck(tmp_path / "run").ok
