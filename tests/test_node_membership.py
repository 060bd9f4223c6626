"""Membership: add a node and remove another while the sale goes on (real processes),
the leader's refusal rules, and the `flashsale cluster` command line."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli import status
from cli.main import main
from node.membership import refusal
from tests.support.cluster import LocalCluster, free_ports
from tests.test_node_api import Api, start_api

Factory = Callable[..., LocalCluster]
DEADLINE_S = 30.0
REPO_CONFIG = Path(__file__).resolve().parents[1] / "cluster.toml"


def product() -> dict[str, Any]:
    return {
        "type": "create_product",
        "key": "create-lamp",
        "product_id": "lamp",
        "name": "Lamp",
        "price_minor": 2500,
        "total_stock": 100_000,
    }


def members(cluster: LocalCluster, node_id: str) -> set[str]:
    return {m["id"] for m in cluster.status(node_id)["members"]}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Seller(threading.Thread):
    """Reserves one lamp per submit until stopped; remembers every acknowledged hold."""

    def __init__(self, cluster: LocalCluster, first: int = 0) -> None:
        super().__init__(name="seller", daemon=True)
        self.cluster = cluster
        self.first = first
        self.stop = threading.Event()
        self.holds: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        n = self.first
        try:
            while not self.stop.is_set():
                cmd = {"type": "reserve", "key": f"s{n}", "user_id": f"u{n}"}
                cmd |= {"product_id": "lamp", "quantity": 1}
                result = self.cluster.submit([cmd])["results"][0]
                assert result["type"] == "hold_placed", result
                self.holds.append(result["hold_id"])
                n += 1
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def sold_since(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.holds) >= count + 5 or self.error is not None

    def finish(self) -> list[str]:
        """Stop selling; the acknowledged holds."""
        self.stop.set()
        self.join(DEADLINE_S)
        assert self.error is None, self.error
        return self.holds


@pytest.mark.cluster
def test_add_a_node_and_remove_a_follower_while_selling(
    local_cluster: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = local_cluster(n_nodes=4, joining=("n4",))
    leader = cluster.start()
    assert not cluster.is_running("n4")
    assert members(cluster, leader) == {"n1", "n2", "n3"}
    cluster.submit([product()])
    config = ["--config", str(cluster.config_path)]
    seller = Seller(cluster)
    seller.start()
    try:
        wait_for(seller.sold_since(0), "the first sales")
        assert main(["cluster", "add-node", "n4", *config]) == 0
        assert "n4 is a member" in capsys.readouterr().out
        assert members(cluster, cluster.wait_for_leader()) == {"n1", "n2", "n3", "n4"}
        assert main(["cluster", "add-node", "n4", *config]) == 1  # already a member
        assert "already a member" in capsys.readouterr().err
        cluster.start_node("n4")
        wait_for(seller.sold_since(len(seller.holds)), "sales after n4 started")
    finally:
        holds = seller.finish()
    cluster.wait_converged(min_index=len(holds))  # n4 caught up: the same digest
    assert all(cluster.request("n4", "GET", f"/v1/holds/{h}").status == 200 for h in holds)

    seller = Seller(cluster, first=len(holds))
    seller.start()
    try:
        wait_for(seller.sold_since(0), "sales before the removal")
        leader = cluster.wait_for_leader()
        assert main(["cluster", "remove-node", leader, *config]) == 1
        assert "is the leader" in capsys.readouterr().err
        gone = next(n for n in ("n1", "n2", "n3") if n != leader)
        assert main(["cluster", "remove-node", gone, *config]) == 0
        assert f"{gone} is no longer a member" in capsys.readouterr().out
        cluster.stop_node(gone)
        wait_for(seller.sold_since(len(seller.holds)), "sales after the removal")
    finally:
        holds += seller.finish()
    left = {"n1", "n2", "n3", "n4"} - {gone}
    assert members(cluster, cluster.wait_for_leader()) == left
    cluster.wait_converged(min_index=len(holds))
    assert all(cluster.request("n4", "GET", f"/v1/holds/{h}").status == 200 for h in holds)
    follower = next(n for n in sorted(left) if n != cluster.wait_for_leader())
    cluster.restart_node(follower)  # the journal remembers the changes
    wait_for(lambda: members(cluster, follower) == left, f"{follower}'s members after restart")
    assert main(["status", *config]) == 0
    assert f"members: {', '.join(sorted(left))}" in capsys.readouterr().out


@dataclass(frozen=True)
class Partner:
    raft: str
    connected: bool


A, B, C, D = "h:1", "h:2", "h:3", "h:4"


def test_add_needs_a_live_majority_of_the_new_set() -> None:
    assert refusal("add", D, A, [Partner(B, True), Partner(C, True)]) is None
    dead = refusal("add", D, A, [Partner(B, True), Partner(C, False)])
    assert dead is not None and "remove a dead member first" in dead
    assert refusal("add", D, A, [Partner(B, True)]) is None  # the replacement, after removal
    assert "already a member" in (refusal("add", B, A, [Partner(B, True)]) or "")
    assert "already a member" in (refusal("add", A, A, []) or "")


def test_remove_refuses_the_leader_strangers_and_a_lost_quorum() -> None:
    three = [Partner(B, True), Partner(C, False)]
    assert "is the leader" in (refusal("remove", A, A, three) or "")
    assert "not a member" in (refusal("remove", D, A, three) or "")
    assert refusal("remove", C, A, three) is None  # the dead one: 2 live of 2 left
    lost = refusal("remove", B, A, three)  # the live one: 1 live of 2 left
    assert lost is not None and "quorum" in lost
    assert "expected one of" in (refusal("promote", B, A, three) or "")


def test_status_table_lists_the_leaders_members() -> None:
    lead = {"role": "leader", "term": 2, "leader": {"id": "n1"}, "members": [{"id": "n1"}]}
    lead["members"] = [{"id": "n1"}, {"id": "n2"}, {"id": "n4"}]
    out = status.table({"n1": lead, "n2": None})
    assert out.splitlines()[-1] == "members: n1, n2, n4"


def test_cluster_commands_need_a_configured_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "add-node", "n9", "--config", str(REPO_CONFIG)]) == 2
    assert "no node 'n9'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "remove-node"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "add-node", "x" * 200])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "promote", "n1"])
    assert exc.value.code == 2


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path):
        yield a


async def membership(api: Api, body: Any, *, auth: bool = True) -> tuple[int, dict[str, Any]]:
    headers = api.headers if auth else {}
    resp = await api.client.post("/v1/membership", json=body, headers=headers)
    assert resp.content_type in ("application/json", "application/problem+json")
    return resp.status, await resp.json(content_type=None)


async def test_membership_endpoint_refuses_what_would_break_the_cluster(api: Api) -> None:
    _, st = await api.get("/v1/status")
    me = api.config.node("n1")
    assert st["members"] == [{"id": "n1", "raft": str(me.raft), "api": str(me.api)}]
    status, body = await membership(api, {"action": "add", "node_id": "n5"}, auth=False)
    assert status == 401
    status, body = await membership(api, {"action": "remove", "node_id": "n1"})
    assert (status, body["type"]) == (409, "https://flashsale.dev/problems/membership-refused")
    assert "is the leader" in body["detail"]
    raft, port = free_ports(2)  # nothing listens: the newcomer would cost the quorum
    stranger = {"raft": f"127.0.0.1:{raft}", "api": f"127.0.0.1:{port}"}
    status, body = await membership(api, {"action": "add", "node_id": "n5", **stranger})
    assert status == 409 and "remove a dead member first" in body["detail"]
    for bad in (
        [],
        {"action": "promote", "node_id": "n5"},
        {"action": "add", "node_id": ""},
        {"action": "add", "node_id": "n5"},  # not in the config: raft and api needed
        {"action": "add", "node_id": "n5", "raft": "nohost", "api": "127.0.0.1:1"},
        {"action": "remove", "node_id": "n1", "raft": "127.0.0.1:1"},  # not n1's address
    ):
        status, body = await membership(api, bad)
        assert status == 400, (bad, body)
    _, st = await api.get("/v1/status")
    assert [m["id"] for m in st["members"]] == ["n1"]
