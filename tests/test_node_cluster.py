"""Real node processes on loopback: leader routing, failover after SIGKILL, catch-up from
the journal and from a snapshot, whole-cluster restart, five nodes losing two, expiry
across a leader change, the feed across nodes, authentication."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.cluster

Factory = Callable[..., LocalCluster]
DEADLINE_S = 30.0


def product(stock: int = 10_000, **extra: Any) -> dict[str, Any]:
    return {
        "type": "create_product",
        "key": "create-lamp",
        "product_id": "lamp",
        "name": "Lamp",
        "price_minor": 2500,
        "total_stock": stock,
        **extra,
    }


def reserve_each(cluster: LocalCluster, first: int, count: int) -> dict[str, str]:
    """One acknowledged reserve per submit; returns key -> hold id."""
    holds = {}
    for n in range(first, first + count):
        key = f"r{n}"
        body = cluster.submit(
            [
                {
                    "type": "reserve",
                    "key": key,
                    "user_id": f"u{n}",
                    "product_id": "lamp",
                    "quantity": 1,
                }
            ]
        )
        result = body["results"][0]
        assert result["type"] == "hold_placed", result
        holds[key] = result["hold_id"]
    return holds


def assert_holds_present(cluster: LocalCluster, node_id: str, holds: dict[str, str]) -> None:
    missing = [
        h for h in holds.values() if cluster.request(node_id, "GET", f"/v1/holds/{h}").status != 200
    ]
    assert missing == [], f"acknowledged holds lost on {node_id}: {missing}"


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_leader_commits_followers_redirect_and_every_node_serves_the_feed(
    local_cluster: Factory,
) -> None:
    cluster = local_cluster()
    leader = cluster.start()
    follower = next(n for n in cluster.node_ids if n != leader)
    body = cluster.submit([product()])
    assert body["results"][0]["type"] == "product_saved"
    holds = reserve_each(cluster, 0, 5)

    redirect = cluster.request(
        follower,
        "POST",
        "/v1/commands",
        {
            "commands": [
                {"type": "reserve", "key": "x", "user_id": "u", "product_id": "lamp", "quantity": 1}
            ]
        },
    )
    assert redirect.status == 421
    assert redirect.headers["Content-Type"].startswith("application/problem+json")
    assert redirect.body["type"].endswith("/not-leader")
    assert redirect.body["leader"] == {"id": leader, "api": str(cluster.config.node(leader).api)}

    index, _ = cluster.wait_converged(min_index=6)
    assert index == 6
    assert_holds_present(cluster, follower, holds)

    # The feed of a follower: the same ordered events, and a long-poll woken by a commit.
    page = cluster.get(follower, "/v1/feed?from=0")
    positions = [(e["index"], e["seq"]) for e in page["events"]]
    assert positions == sorted(positions) and page["last_index"] == 6
    assert page["events"] == cluster.get(leader, "/v1/feed?from=0")["events"]
    woken: dict[str, Any] = {}
    poll = threading.Thread(
        target=lambda: woken.update(cluster.get(follower, "/v1/feed?from=6&wait_ms=20000"))
    )
    poll.start()
    wait_for(lambda: cluster.status(follower)["feed"]["waiters"] == 1, "the long-poll")
    reserve_each(cluster, 5, 1)
    poll.join(DEADLINE_S)
    assert woken["last_index"] == 7
    assert [e["key"] for e in woken["events"]] == ["r5"]


def test_wrong_bearer_is_refused_everywhere(local_cluster: Factory) -> None:
    cluster = local_cluster()
    leader = cluster.start()
    for node_id in cluster.node_ids:
        for token in ("", "wrong", cluster.token[:-1]):
            answer = cluster.request(node_id, "GET", "/v1/status", token=token)
            assert answer.status == 401 and answer.body["type"].endswith("/unauthorized")
        refused = cluster.request(
            leader, "POST", "/v1/commands", {"commands": [product()]}, token="wrong"
        )
        assert refused.status == 401
    assert cluster.status(leader)["ledger_index"] == 0
    # Health and metrics stay open to probes and scrapers.
    assert cluster.request(leader, "GET", "/healthz", token="").status == 200


def test_leader_sigkill_keeps_every_acknowledged_hold_and_selling_goes_on(
    local_cluster: Factory,
) -> None:
    cluster = local_cluster()
    old = cluster.start()
    cluster.submit([product()])
    holds = reserve_each(cluster, 0, 30)
    cluster.kill_node(old)
    new = cluster.wait_for_leader(10.0, exclude=old)
    assert new != old
    assert_holds_present(cluster, new, holds)
    holds |= reserve_each(cluster, 30, 10)
    cluster.start_node(old)
    cluster.wait_converged(min_index=41)
    assert_holds_present(cluster, old, holds)
    assert cluster.get(old, "/v1/products/lamp")["product"]["reserved"] == 40


def test_a_killed_follower_catches_up_from_its_journal_and_from_a_snapshot(
    local_cluster: Factory,
) -> None:
    cluster = local_cluster(log_compaction_entries=10)
    leader = cluster.start()
    follower = next(n for n in cluster.node_ids if n != leader)
    cluster.submit([product()])
    reserve_each(cluster, 0, 5)
    # Clean stop (SIGTERM): an in-flight long-poll is answered, exit 0, then a restart
    # from its own journal.
    # The leader acknowledged index 6 once a majority had it; this follower may apply it
    # a heartbeat later, which must not end the poll (nothing above 6): only the SIGTERM.
    polled: dict[str, Any] = {}
    poll_errors: list[BaseException] = []

    def long_poll() -> None:
        try:
            answer = cluster.request(
                follower, "GET", "/v1/feed?from=6&wait_ms=25000", timeout_s=DEADLINE_S
            )
            polled.update(status=answer.status, body=answer.body)
        except BaseException as exc:  # reported by the assertion below
            poll_errors.append(exc)

    poll = threading.Thread(target=long_poll)
    poll.start()
    wait_for(lambda: cluster.status(follower)["feed"]["waiters"] == 1, "the long-poll")
    assert cluster.stop_node(follower) == 0
    poll.join(DEADLINE_S)
    assert poll_errors == []
    assert polled == {
        "status": 200,
        "body": {"events": [], "last_index": 6, "snapshot": None},
    }
    reserve_each(cluster, 5, 3)
    cluster.start_node(follower)
    cluster.wait_converged(min_index=9)
    # SIGKILL, and the leader compacts its log meanwhile: the follower needs a snapshot.
    cluster.kill_node(follower)
    holds = reserve_each(cluster, 8, 40)
    # The log is appended across restarts, and the restart above may already have been
    # handed a snapshot (the leader compacts past 10 entries): look at this run's lines.
    log_offset = cluster.log_path(follower).stat().st_size
    cluster.start_node(follower)
    index, _ = cluster.wait_converged(min_index=49)
    assert index == 49
    assert_holds_present(cluster, follower, holds)
    with cluster.log_path(follower).open("rb") as f:
        f.seek(log_offset)
        log = f.read().decode("utf-8", "replace")
    assert '"from_leader":true' in log  # the snapshot path was taken after the SIGKILL


def test_whole_cluster_sigkilled_restarts_with_identical_state(local_cluster: Factory) -> None:
    cluster = local_cluster(log_compaction_entries=10)
    cluster.start()
    cluster.submit([product()])
    holds = reserve_each(cluster, 0, 35)
    cluster.submit([{"type": "release", "key": "rel", "user_id": "u3", "hold_id": holds["r3"]}])
    _, digest = cluster.wait_converged(min_index=37)
    products = cluster.get(cluster.node_ids[0], "/v1/products")["products"]

    for node_id in cluster.node_ids:
        cluster.procs[node_id].kill()
    for node_id in cluster.node_ids:
        cluster.procs[node_id].wait()
    leader = cluster.start()

    assert cluster.wait_converged(min_index=37) == (37, digest)
    for node_id in cluster.node_ids:
        assert cluster.get(node_id, "/v1/products")["products"] == products
    assert_holds_present(cluster, leader, holds)
    # Restored from a dump: a feed reader from the start is handed a snapshot first.
    page = cluster.get(leader, "/v1/feed?from=0")
    assert page["snapshot"] is not None
    assert page["snapshot"]["index"] <= page["last_index"] == 37


def test_five_nodes_keep_committing_with_two_down(local_cluster: Factory) -> None:
    cluster = local_cluster(n_nodes=5)
    old = cluster.start()
    cluster.submit([product()])
    holds = reserve_each(cluster, 0, 5)
    follower = next(n for n in cluster.node_ids if n != old)
    cluster.kill_node(old)
    cluster.kill_node(follower)
    new = cluster.wait_for_leader(10.0, exclude=old)
    holds |= reserve_each(cluster, 5, 10)
    assert_holds_present(cluster, new, holds)
    cluster.start_node(old)
    cluster.start_node(follower)
    assert cluster.wait_converged(min_index=16)[0] == 16


def test_a_hold_expires_across_a_leader_change(local_cluster: Factory) -> None:
    cluster = local_cluster(expire_period_ms=100)
    old = cluster.start()
    cluster.submit([product(stock=3, hold_ttl_ms=2000)])
    hold = reserve_each(cluster, 0, 1)["r0"]
    cluster.kill_node(old)  # the leader that placed the hold is gone before it is due
    new = cluster.wait_for_leader(10.0, exclude=old)

    def expired() -> bool:
        return cluster.get(new, f"/v1/holds/{hold}")["hold"]["status"] == "expired"

    wait_for(expired, "the hold to expire")
    assert cluster.get(new, "/v1/products/lamp")["product"]["available"] == 3
    expires = [
        e for e in cluster.get(new, "/v1/feed?from=0")["events"] if e["kind"] == "hold_expired"
    ]
    assert [e["hold_id"] for e in expires] == [hold]


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_nodes_fsync_what_they_acknowledge_only_in_fsync_mode(
    local_cluster: Factory, durability: str
) -> None:
    cluster = local_cluster(durability=durability)
    cluster.start()

    def syncs(node_id: str) -> float:
        found = re.search(
            r"flashsale_node_journal_sync_seconds_count (\S+)", cluster.metrics(node_id)
        )
        assert found is not None
        return float(found.group(1))

    before = {n: syncs(n) for n in cluster.node_ids}
    cluster.submit([product()])
    reserve_each(cluster, 0, 5)
    cluster.wait_converged(min_index=6)
    for node_id in cluster.node_ids:
        assert cluster.status(node_id)["durability"] == durability
        after = syncs(node_id)
        if durability == "fsync":
            assert after > before[node_id], node_id  # entries reached its disk
        else:
            assert after == 0, node_id  # page cache only
