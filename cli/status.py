"""``flashsale status``: every node's view of the cluster as one table.

The line under the table lists the Raft members as the leader counts them (a node can
be configured without being a member: `flashsale cluster add-node` makes it one).
Health is ``down`` when the node does not answer, ``behind N`` when it has applied N or
more entries fewer than the highest commit index any node reports, ``ok`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cli.tables import render
from cluster.client import leader_id

BEHIND_ENTRIES = 1000  # a node this far behind the commit index is reported as behind


def health(status: Mapping[str, Any] | None, commit_index: int) -> str:
    if status is None:
        return "down"
    applied = status.get("last_applied")
    if isinstance(applied, int) and commit_index - applied >= BEHIND_ENTRIES:
        return f"behind {commit_index - applied}"
    return "ok"


def table(statuses: Mapping[str, Mapping[str, Any] | None]) -> str:
    """One row per node, in config order, then a line naming the leader."""
    commits = [s.get("commit_index") for s in statuses.values() if s is not None]
    commit_index = max((c for c in commits if isinstance(c, int)), default=0)
    header = ["ID", "ROLE", "TERM", "COMMIT", "APPLIED", "LEDGER", "LEADER", "HEALTH"]
    rows = []
    for node_id, s in statuses.items():
        if s is None:
            rows.append([node_id, "-", "-", "-", "-", "-", "-", "down"])
            continue
        seen = s.get("leader")
        rows.append(
            [
                node_id,
                str(s.get("role", "?")),
                str(s.get("term", "?")),
                str(s.get("commit_index", "?")),
                str(s.get("last_applied", "?")),
                str(s.get("ledger_index", "?")),
                str(seen.get("id", "?")) if isinstance(seen, dict) else "-",
                health(s, commit_index),
            ]
        )
    leader = leader_id(statuses)
    up = sum(s is not None for s in statuses.values())
    footer = (
        f"leader: {leader} ({up}/{len(statuses)} nodes answering)"
        if leader is not None
        else f"no leader ({up}/{len(statuses)} nodes answering)"
    )
    lines = [render(header, rows), footer]
    lead_status = statuses.get(leader) if leader is not None else None
    members = member_ids(lead_status) if lead_status is not None else None
    if members is not None:
        lines.append(f"members: {', '.join(members)}")
    return "\n".join(lines)


def member_ids(status: Mapping[str, Any]) -> list[str] | None:
    """The member ids a node's /v1/status lists (None when it lists none)."""
    members = status.get("members")
    if not isinstance(members, list):
        return None
    return [str(m.get("id")) for m in members if isinstance(m, dict)]


def membership_change(action: str, node_id: str, answer: Mapping[str, Any]) -> str:
    """What ``flashsale cluster add-node/remove-node`` prints after the leader agreed."""
    members = member_ids(answer) or []
    listed = ", ".join(members) if members else "?"
    if action == "add":
        return (
            f"{node_id} is a member (members: {listed}); start it if it is not running: "
            f"flashsale node {node_id}"
        )
    return (
        f"{node_id} is no longer a member (members: {listed}); stop its process and "
        "delete it from cluster.toml"
    )
