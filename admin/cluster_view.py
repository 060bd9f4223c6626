"""The cluster as the console shows it, computed from what the nodes and gateways report.

Theory of operation (pure functions, no I/O): ``node_rows`` turns every node's
``/v1/status`` (or None for a node that did not answer) into one row: role, term, commit
index and lag behind the leader (the leader's commit index minus the node's, never
negative: the statuses are read a few milliseconds apart). The leader is the node that
says it leads with the highest term, as a partitioned old leader may still believe it
leads. Rows follow the leader's member list when it sends one: a node of the config that
is not a member (removed, or not yet added) has no row, and a member far behind the
leader shows as catching up. ``request_total`` reads a gateway's Prometheus text, and
``rate_per_s`` turns two readings into requests per second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cluster.config import ClusterConfig

# Counter names a gateway may expose for the requests it served, most specific first.
REQUEST_COUNTERS = (
    "flashsale_gateway_requests_total",
    "gateway_requests_total",
    "http_requests_total",
)
SCRAPE_ROUTE = "/metrics"
CATCHING_UP_LAG = 100  # a member this many entries behind the leader is "catching up"


@dataclass(frozen=True, slots=True)
class NodeRow:
    id: str
    api: str
    up: bool
    role: str  # leader | follower | candidate | down
    term: int | None
    commit_index: int | None
    last_applied: int | None
    lag: int | None  # leader commit index - this node's; None without a leader or when down
    log_size: int | None
    uptime_s: float | None
    leader_id: str | None  # whom this node believes leads
    health: str = "down"  # up | down | catching up

    def as_json(self) -> dict[str, Any]:
        return {
            "health": self.health,
            "id": self.id,
            "api": self.api,
            "up": self.up,
            "role": self.role,
            "term": self.term,
            "commit_index": self.commit_index,
            "last_applied": self.last_applied,
            "lag": self.lag,
            "log_size": self.log_size,
            "uptime_s": self.uptime_s,
            "leader_id": self.leader_id,
        }


@dataclass(frozen=True, slots=True)
class GatewayReading:
    requests_total: float | None  # None: unreachable or no request counter
    at_ms: int
    up: bool


@dataclass(frozen=True, slots=True)
class GatewayRow:
    id: str
    listen: str
    up: bool
    requests_total: float | None
    rate_per_s: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "listen": self.listen,
            "up": self.up,
            "requests_total": self.requests_total,
            "rate_per_s": self.rate_per_s,
        }


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def leader_id(statuses: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The node that says it leads; with two, the one with the higher term."""
    best: tuple[int, str] | None = None
    for node_id, status in statuses.items():
        if status is None or status.get("role") != "leader":
            continue
        term = _int(status.get("term"))
        term_n = -1 if term is None else term
        if best is None or term_n > best[0]:
            best = (term_n, node_id)
    return None if best is None else best[1]


def member_ids(status: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The member ids a node's /v1/status lists; None when it lists none."""
    members = status.get("members") if status is not None else None
    if not isinstance(members, list):
        return None
    return frozenset(str(m.get("id")) for m in members if isinstance(m, dict))


def node_rows(
    config: ClusterConfig, statuses: Mapping[str, Mapping[str, Any] | None]
) -> list[NodeRow]:
    """One row per configured member (every configured node without a leader's list),
    in config order."""
    lead = leader_id(statuses)
    lead_status = statuses.get(lead) if lead is not None else None
    lead_commit = _int(lead_status.get("commit_index")) if lead_status is not None else None
    members = member_ids(lead_status)
    rows = []
    for node in config.nodes:
        if members is not None and node.id not in members:
            continue
        status = statuses.get(node.id)
        if status is None:
            rows.append(
                NodeRow(
                    node.id, str(node.api), False, "down", None, None, None, None, None, None, None
                )
            )
            continue
        commit = _int(status.get("commit_index"))
        lag = None
        if lead_commit is not None and commit is not None:
            lag = max(0, lead_commit - commit)
        believed = status.get("leader")
        believed_id = believed.get("id") if isinstance(believed, dict) else None
        rows.append(
            NodeRow(
                id=node.id,
                api=str(node.api),
                up=True,
                role=str(status.get("role", "unknown")),
                term=_int(status.get("term")),
                commit_index=commit,
                last_applied=_int(status.get("last_applied")),
                lag=lag,
                log_size=_int(status.get("log_size")),
                uptime_s=_num(status.get("uptime_s")),
                leader_id=believed_id if isinstance(believed_id, str) else None,
                health="catching up" if lag is not None and lag >= CATCHING_UP_LAG else "up",
            )
        )
    return rows


def request_total(metrics_text: str) -> float | None:
    """Requests a gateway has served, from its /metrics text; None without a known counter."""
    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                # The console's own scrapes are requests too; leave them out of the rate.
                if sample.labels.get("route") == SCRAPE_ROUTE:
                    continue
                if sample.name in REQUEST_COUNTERS:
                    totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    except ValueError:
        return None
    for name in REQUEST_COUNTERS:
        if name in totals:
            return totals[name]
    return None


def rate_per_s(previous: GatewayReading | None, current: GatewayReading) -> float | None:
    """Requests per second between two readings; None when unknown (first reading, a
    restart that reset the counter, or no counter)."""
    if previous is None or previous.requests_total is None or current.requests_total is None:
        return None
    elapsed_ms = current.at_ms - previous.at_ms
    delta = current.requests_total - previous.requests_total
    if elapsed_ms <= 0 or delta < 0:
        return None
    return delta * 1000.0 / elapsed_ms
