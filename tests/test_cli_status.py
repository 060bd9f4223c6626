"""`flashsale status`: who leads, who is down, who is behind."""

from __future__ import annotations

from typing import Any

from cli.status import BEHIND_ENTRIES, table
from cluster.client import leader_id


def node(node_id: str, role: str, term: int, applied: int, leader: str | None) -> dict[str, Any]:
    return {
        "id": node_id,
        "role": role,
        "term": term,
        "commit_index": applied,
        "last_applied": applied,
        "ledger_index": applied - 1,
        "leader": None if leader is None else {"id": leader, "api": "127.0.0.1:1"},
    }


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines()[1:-1]}


def test_a_healthy_cluster_names_its_leader() -> None:
    statuses = {
        "n1": node("n1", "follower", 3, 40, "n2"),
        "n2": node("n2", "leader", 3, 40, "n2"),
        "n3": node("n3", "follower", 3, 40, "n2"),
    }
    text = table(statuses)
    assert text.splitlines()[0].split() == [
        "ID",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LEDGER",
        "LEADER",
        "HEALTH",
    ]
    assert rows(text)["n2"] == ["n2", "leader", "3", "40", "40", "39", "n2", "ok"]
    assert text.splitlines()[-1] == "leader: n2 (3/3 nodes answering)"
    assert leader_id(statuses) == "n2"


def test_down_and_lagging_nodes_are_reported() -> None:
    statuses: dict[str, dict[str, Any] | None] = {
        "n1": node("n1", "leader", 5, 5000, "n1"),
        "n2": None,
        "n3": node("n3", "follower", 5, 5000 - BEHIND_ENTRIES, "n1"),
    }
    r = rows(table(statuses))
    assert r["n2"][-1] == "down"
    assert r["n3"][-2:] == ["behind", str(BEHIND_ENTRIES)]
    assert r["n1"][-1] == "ok"
    assert table(statuses).splitlines()[-1] == "leader: n1 (2/3 nodes answering)"


def test_without_a_leader_the_last_line_says_so() -> None:
    statuses = {"n1": node("n1", "candidate", 7, 9, None), "n2": None}
    assert table(statuses).splitlines()[-1] == "no leader (1/2 nodes answering)"
    assert leader_id(statuses) is None


def test_two_claimants_resolve_to_the_later_term() -> None:
    statuses = {"n1": node("n1", "leader", 4, 9, "n1"), "n2": node("n2", "leader", 6, 9, "n2")}
    assert leader_id(statuses) == "n2"
