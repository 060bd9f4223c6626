"""The snapshot writer's Prometheus metrics, in a registry of its own (GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000)
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class WriterMetrics:
    """Every metric the writer exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "flashsale_snapshots_events_applied", "Feed events applied to the store", registry=r
        )
        self.rows = Counter(
            "flashsale_snapshots_rows_written", "Rows written (merged per batch)", registry=r
        )
        self.batches = Counter(
            "flashsale_snapshots_batches", "Store transactions committed", registry=r
        )
        self.rebuilds = Counter(
            "flashsale_snapshots_rebuilds",
            "Rebuilds from a ledger snapshot (the writer fell behind the feed's retention)",
            registry=r,
        )
        self.missing_rows = Counter(
            "flashsale_snapshots_missing_rows",
            "Updates that found no row (records the store never saw)",
            registry=r,
        )
        self.unsealed_dropped = Counter(
            "flashsale_snapshots_unsealed_details_dropped",
            "Order details not stored because they were not sealed",
            registry=r,
        )
        self.failures = Counter(
            "flashsale_snapshots_failures",
            "Failed feed reads and store writes",
            ["kind"],
            registry=r,
        )
        self.applied_index = Gauge(
            "flashsale_snapshots_applied_index", "Last ledger index in the store", registry=r
        )
        self.applied_at_ms = Gauge(
            "flashsale_snapshots_applied_at_ms",
            "Ledger time (ms since epoch) of the last applied entry",
            registry=r,
        )
        self.batch_events = Histogram(
            "flashsale_snapshots_batch_events",
            "Events per store transaction",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "flashsale_snapshots_batch_seconds",
            "Time to apply one page in the store",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
