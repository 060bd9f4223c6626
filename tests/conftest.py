"""Shared fixtures. ``local_cluster`` builds LocalClusters (tests/support/cluster.py) and
SIGKILLs every process they started when the test ends, pass or fail; on failure it
prints the tail of every process log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import LocalCluster


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def local_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LocalCluster]]:
    """A factory: ``local_cluster(n_nodes=3, gateways=0, durability=..., **raft)``."""
    made: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", **kwargs)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.kill_all()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for cluster in made:
                print(cluster.tails())
