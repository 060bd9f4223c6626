"""The notifier's Prometheus metrics, in a registry of its own (GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class NotifierMetrics:
    """Every metric the notifier exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.feed_index = Gauge(
            "flashsale_notifier_feed_index", "Last ledger index applied to the outbox", registry=r
        )
        self.events = Counter(
            "flashsale_notifier_events_applied", "Feed events applied to the outbox", registry=r
        )
        self.enqueued = Counter(
            "flashsale_notifier_enqueued",
            "Notifications recorded in the outbox",
            ["channel", "queue"],
            registry=r,
        )
        self.sent = Counter(
            "flashsale_notifier_sent",
            "Notifications a provider took",
            ["channel", "queue"],
            registry=r,
        )
        self.send_failures = Counter(
            "flashsale_notifier_send_failures",
            "Failed sends (transient: tried again; permanent: given up)",
            ["channel", "kind"],
            registry=r,
        )
        self.given_up = Counter(
            "flashsale_notifier_given_up",
            "Notifications given up (permanent refusal or too many attempts)",
            ["channel"],
            registry=r,
        )
        self.skipped = Counter(
            "flashsale_notifier_skipped",
            "Notifications not sent: no_contact, deduped, erased, stale",
            ["reason"],
            registry=r,
        )
        self.feed_gaps = Counter(
            "flashsale_notifier_feed_gaps",
            "Times the notifier fell behind the feed's retention (notices of the gap lost)",
            registry=r,
        )
        self.failures = Counter(
            "flashsale_notifier_failures",
            "Failed feed reads and outbox writes",
            ["kind"],
            registry=r,
        )
        self.pending = Gauge(
            "flashsale_notifier_pending",
            "Notifications waiting to be sent",
            ["channel", "queue"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "flashsale_notifier_subscriptions", "Stock subscriptions stored", registry=r
        )
        self.send_seconds = Histogram(
            "flashsale_notifier_send_seconds",
            "Time a provider took to accept one notification",
            ["channel"],
            buckets=SEND_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
