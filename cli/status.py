"""``flashsale status``: every node's view of the cluster as one table.

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
    return render(header, rows) + "\n" + footer
