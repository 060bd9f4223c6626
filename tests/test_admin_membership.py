"""Raft membership from the console (aiohttp test client, in-process cluster): the
forms are for operators only, CSRF-protected and audited, and the node table follows the
leader's member list (a removed node disappears, an added one appears)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import CookieJar
from aiohttp.test_utils import TestClient, TestServer

from admin.cluster_view import CATCHING_UP_LAG, node_rows
from admin.operators import create_operator
from admin.server import create_app
from admin.store import open_store
from cluster.config import ClusterConfig, NodeConfig, build_config
from cluster.errors import MembershipRefused
from tests.test_admin_console import PASSWORD, Console, FakeClock, LedgerCluster, signed_in


@dataclass
class MemberCluster(LedgerCluster):
    """LedgerCluster whose leader n1 lists its members and takes membership changes."""

    members: list[str] = field(default_factory=lambda: ["n1", "n2", "n3"])
    changes: list[tuple[str, str]] = field(default_factory=list)

    def status(self, node_id: str) -> dict[str, Any]:
        answer = super().status(node_id)
        answer["members"] = [{"id": m} for m in self.members]
        return answer

    async def change_membership(
        self, action: str, node: NodeConfig, *, deadline_s: float = 15.0
    ) -> dict[str, Any]:
        self.changes.append((action, node.id))
        if action == "remove" and node.id == "n1":
            raise MembershipRefused("h:1 is the leader and cannot remove itself")
        if action == "add":
            self.members.append(node.id)
        else:
            self.members.remove(node.id)
        return {"action": action, "members": [{"id": m} for m in self.members]}


def make_config(tmp_path: Path) -> ClusterConfig:
    nodes = [
        {"id": f"n{i}", "raft": f"127.0.0.1:{17000 + i}", "api": f"127.0.0.1:{17100 + i}"}
        for i in range(1, 5)
    ]
    nodes[3]["joining"] = True
    data = {"cluster": {"data_dir": str(tmp_path), "secret": "test-secret"}, "nodes": nodes}
    return build_config(data, tmp_path)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    cfg = make_config(tmp_path)
    db = tmp_path / "admin.db"
    conn = open_store(db)
    create_operator(conn, "alice", PASSWORD, ["operator"], at_ms=0, created_by="test")
    create_operator(conn, "viewer", PASSWORD, [], at_ms=0, created_by="test")
    conn.close()
    clock = FakeClock()
    cluster = MemberCluster(clock)
    app = create_app(cfg, cluster=cluster, clock_ms=clock)
    client: TestClient[Any, Any] = TestClient(TestServer(app), cookie_jar=CookieJar(unsafe=True))
    await client.start_server()
    try:
        yield Console(client, cluster, clock, db, cfg)
    finally:
        await client.close()


async def node_ids(console: Console, want: list[str]) -> list[str]:
    """The node rows of the live snapshot, once they are ``want`` (10 s at most)."""
    found: list[str] = []
    for _ in range(200):
        answer = await console.client.get("/api/cluster")
        if answer.status == 200:
            found = [n["id"] for n in (await answer.json())["nodes"]]
            if found == want:
                return found
        await asyncio.sleep(0.05)
    return found


def cluster_of(console: Console) -> MemberCluster:
    assert isinstance(console.cluster, MemberCluster)
    return console.cluster


async def test_operator_adds_and_removes_a_node_audited(console: Console) -> None:
    await signed_in(console)
    assert await node_ids(console, ["n1", "n2", "n3"]) == ["n1", "n2", "n3"]
    page = await (await console.client.get("/cluster")).text()
    add_form = re.search(r'<form[^>]*id="add-node".*?</form>', page, re.S)
    assert add_form is not None and '<option value="n4">' in add_form.group(0)

    added = await console.post("/cluster/members", {"action": "add", "node_id": "n4"})
    assert added.status == 303
    assert await node_ids(console, ["n1", "n2", "n3", "n4"]) == ["n1", "n2", "n3", "n4"]
    removed = await console.post("/cluster/members", {"action": "remove", "node_id": "n2"})
    assert removed.status == 303
    assert await node_ids(console, ["n1", "n3", "n4"]) == ["n1", "n3", "n4"]
    refused = await console.post("/cluster/members", {"action": "remove", "node_id": "n1"})
    assert refused.status == 409
    assert "cannot remove itself" in await refused.text()
    unknown = await console.post("/cluster/members", {"action": "add", "node_id": "n9"})
    assert unknown.status == 422

    assert cluster_of(console).changes == [("add", "n4"), ("remove", "n2"), ("remove", "n1")]
    actions = console.audit_actions()
    assert ("alice", "cluster.add-node", "n4") in actions
    assert ("alice", "cluster.remove-node", "n2") in actions
    assert ("alice", "cluster.remove-node", "n1") in actions  # refusals are audited too


async def test_membership_forms_need_the_csrf_token_and_the_operator_right(
    console: Console,
) -> None:
    await signed_in(console)
    form = {"action": "add", "node_id": "n4"}
    assert (await console.post("/cluster/members", form, csrf=False)).status == 403
    forged = await console.post("/cluster/members", {**form, "csrf_token": "x"}, csrf=False)
    assert forged.status == 403
    assert ("alice", "write.refused", "/cluster/members") in console.audit_actions()
    await console.client.post("/logout", data={"csrf_token": await console.csrf()})

    await signed_in(console, "viewer")
    await node_ids(console, ["n1", "n2", "n3"])
    assert 'id="add-node"' not in await (await console.client.get("/cluster")).text()
    assert (await console.post("/cluster/members", form)).status == 403
    assert ("viewer", "denied", "n4") in console.audit_actions()
    assert cluster_of(console).changes == []  # nothing reached the cluster


def test_node_rows_follow_the_leaders_members_and_show_catching_up(tmp_path: Path) -> None:
    def st(role: str, commit: int) -> dict[str, Any]:
        members = [{"id": m} for m in ("n1", "n3", "n4")]
        return {"role": role, "term": 2, "commit_index": commit, "members": members}

    statuses = {"n1": st("leader", 1000), "n2": st("follower", 1000)}
    statuses |= {"n3": st("follower", 1000 - CATCHING_UP_LAG + 1), "n4": st("follower", 10)}
    rows = node_rows(make_config(tmp_path), statuses)
    assert [(r.id, r.health) for r in rows] == [
        ("n1", "up"),
        ("n3", "up"),
        ("n4", "catching up"),
    ]  # n2 was removed: no row
    del statuses["n1"]  # without a leader's list, every configured node has a row
    assert [r.id for r in node_rows(make_config(tmp_path), statuses)] == ["n1", "n2", "n3", "n4"]
