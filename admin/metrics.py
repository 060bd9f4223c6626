"""The console's own Prometheus metrics (one registry per application)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class ConsoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.logins = Counter(
            "flashsale_admin_logins",
            "Sign-in attempts by outcome (ok, failed, limited).",
            ["outcome"],
            registry=self.registry,
        )
        self.writes = Counter(
            "flashsale_admin_writes",
            "Operator writes to the cluster by action and outcome.",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.live_streams = Gauge(
            "flashsale_admin_live_streams",
            "Open live (SSE) streams.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
