"""A node's Prometheus metrics, in a registry of its own (served at GET /metrics).

Counters and histograms are updated where things happen (the tick thread applies and
syncs, the event loop proposes); gauges of Raft state are refreshed at scrape time from
the node's latest status. prometheus_client's metrics are thread-safe.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cluster.heap import pause_histogram

ROLES = ("leader", "follower", "candidate")
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class NodeMetrics:
    """Every metric a node exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tails_kept = Counter(
            "flashsale_node_log_tails_kept",
            "Resent append_entries rewritten so acknowledged entries were kept",
            registry=r,
        )
        self.commits = Counter(
            "flashsale_node_commits", "Committed batches (Raft entries) applied", registry=r
        )
        self.commands = Counter(
            "flashsale_node_commands_applied", "Commands applied (all batches)", registry=r
        )
        self.batch_commands = Histogram(
            "flashsale_node_batch_commands",
            "Commands per applied batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "flashsale_node_apply_seconds",
            "Time to apply one batch to the ledger (tick thread)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "flashsale_node_commit_seconds",
            "Leader: time from proposal to applied commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.proposals = Counter(
            "flashsale_node_proposals",
            "Proposals on this node by outcome",
            ["outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "flashsale_node_proposals_in_flight", "Proposals awaiting their commit", registry=r
        )
        self.gc_pause_seconds = pause_histogram("flashsale_node", r)
        self.journal_sync_seconds = Histogram(
            "flashsale_node_journal_sync_seconds",
            "fdatasync of the Raft journal",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.role = Gauge(
            "flashsale_node_role", "1 for the node's current role", ["role"], registry=r
        )
        self.term = Gauge("flashsale_node_term", "Current Raft term", registry=r)
        self.commit_index = Gauge("flashsale_node_commit_index", "Raft commit index", registry=r)
        self.last_applied = Gauge("flashsale_node_last_applied", "Raft last applied", registry=r)
        self.log_entries = Gauge(
            "flashsale_node_log_entries", "Raft log entries held (since the dump)", registry=r
        )
        self.ledger_index = Gauge("flashsale_node_ledger_index", "Ledger entry index", registry=r)
        self.admission_refused = Counter(
            "flashsale_node_admission_refused",
            "Internal API requests refused as overloaded (503), by kind (submit, read, feed)",
            ["kind"],
            registry=r,
        )
        self.admission_in_flight = Gauge(
            "flashsale_node_admission_in_flight",
            "Internal API requests being handled, by admission kind",
            ["kind"],
            registry=r,
        )
        self.feed_events = Gauge(
            "flashsale_node_feed_events", "Events retained for feed readers", registry=r
        )

    def set_role(self, role: str) -> None:
        for name in ROLES:
            self.role.labels(role=name).set(1 if name == role else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
