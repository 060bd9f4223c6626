"""Durability (invariant 2): an acknowledged hold survives the whole cluster being
SIGKILLed, again and again, right after the acknowledgement and while the nodes compact
their logs (dump written, journal trimmed) every few entries.

pysyncobj as shipped loses acknowledged entries here (a restart between the dump's rename
and the journal's trim wipes the journal); node.journal/node.dump/node.raft close that.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.cluster

ROUNDS = 5  # full-cluster SIGKILLs
SEED = 20240611  # batch sizes per round; fixed so a failure replays the same history


def kill_everything(cluster: LocalCluster) -> None:
    procs = [cluster.procs[n] for n in cluster.node_ids]
    for proc in procs:  # all three as close together as possible: no clean-up anywhere
        proc.kill()
    for proc in procs:
        proc.wait(10)


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_acknowledged_holds_survive_repeated_full_cluster_sigkill_during_compaction(
    local_cluster: Callable[..., LocalCluster], durability: str
) -> None:
    rng = random.Random(SEED)
    cluster = local_cluster(durability=durability, log_compaction_entries=10)
    cluster.start()
    cluster.submit(
        [
            {
                "type": "create_product",
                "key": "create-lamp",
                "product_id": "lamp",
                "name": "Lamp",
                "price_minor": 2500,
                "total_stock": 100_000,
            }
        ]
    )
    acknowledged: dict[str, str] = {}  # idempotency key -> hold id, only once answered 200
    n = 0
    rounds = ROUNDS if durability == "fsync" else 2
    for _ in range(rounds):
        for _ in range(rng.randint(15, 45)):
            size = rng.choice((1, 1, 1, 3))  # mostly one command per entry, some batches
            batch = [
                {
                    "type": "reserve",
                    "key": f"r{n + i}",
                    "user_id": f"u{n + i}",
                    "product_id": "lamp",
                    "quantity": 1,
                }
                for i in range(size)
            ]
            n += size
            body = cluster.submit(batch)
            for command, result in zip(batch, body["results"], strict=True):
                assert result["type"] == "hold_placed", result
                acknowledged[command["key"]] = result["hold_id"]
        kill_everything(cluster)
        leader = cluster.start()
        cluster.wait_converged()
        product = cluster.get(leader, "/v1/products/lamp")["product"]
        assert product["reserved"] == len(acknowledged)
        missing = [
            h
            for h in acknowledged.values()
            if cluster.request(leader, "GET", f"/v1/holds/{h}").status != 200
        ]
        assert missing == [], f"acknowledged holds lost: {missing}"
    # A retry of an acknowledged key after all that gets the recorded hold, not a new one.
    again = cluster.submit(
        [{"type": "reserve", "key": "r0", "user_id": "u0", "product_id": "lamp", "quantity": 1}]
    )
    assert again["results"][0]["hold_id"] == acknowledged["r0"]
    assert cluster.get(leader, "/v1/products/lamp")["product"]["reserved"] == len(acknowledged)
