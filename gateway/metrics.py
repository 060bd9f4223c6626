"""The gateway's Prometheus metrics, one registry per application.

A registry per application (rather than the process-global default) keeps two gateways
built in one test process from sharing counters.

The two per-request metrics (``flashsale_gateway_requests_total`` and
``flashsale_gateway_request_duration_seconds``) are kept by ``RequestStats`` in plain
ints and floats and turned into Prometheus families only when ``/metrics`` is scraped:
``Counter.labels()`` and a child's lock cost more per request than the inventory read
they measure (docs/BENCHMARKS.md). Same names, labels, buckets and meaning as before.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cluster.heap import pause_histogram

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class RequestStats:
    """Requests answered (by route, method, status) and their durations (by route), in
    plain numbers: the event loop is the only writer, a scrape reads them
    (``collect``, the Prometheus custom-collector protocol)."""

    def __init__(self, buckets: tuple[float, ...] = _LATENCY_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts: dict[tuple[str, str, int], int] = {}
        # route -> [count per bucket (the last one: above every bound, +Inf), sum]
        self._hist: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request answered."""
        key = (route, method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        hist = self._hist.get(route)
        if hist is None:
            hist = self._hist[route] = ([0] * (len(self.buckets) + 1), [0.0])
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound
        # >= seconds.
        hist[0][bisect_left(self.buckets, seconds)] += 1
        hist[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "flashsale_gateway_requests",
            "HTTP requests answered, by route, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in sorted(self.counts.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "flashsale_gateway_request_duration_seconds",
            "Time to answer a request, by route",
            labels=["route"],
        )
        for route, (per_bucket, total) in sorted(self._hist.items()):
            cumulative, running = [], 0
            for bound, n in zip((*map(_bound, self.buckets), "+Inf"), per_bucket, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            latency.add_metric([route], cumulative, total[0])
        yield latency


class LoopCounter:
    """A counter only the event loop increments: a plain int, turned into a Prometheus
    counter (``<name>_total``) when scraped. Used where ``Counter.inc``'s lock is a
    measurable share of the request it counts."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        registry.register(self)

    def inc(self) -> None:
        self.value += 1

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


def _bound(value: float) -> str:
    # The label text prometheus_client's own Histogram writes for a bucket bound ("1.0").
    return str(float(value))


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = RequestStats()
        r.register(self.requests)
        self.batch_size = Histogram(
            "flashsale_gateway_batch_size",
            "Commands per batch submitted to the leader",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batches = Counter(
            "flashsale_gateway_batches_total",
            "Batches submitted, by outcome (ok, overloaded, no_leader, commit_unknown, invalid,"
            " error)",
            ["outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "flashsale_gateway_write_queue_depth", "Writes waiting for a batch", registry=r
        )
        self.shed = Counter(
            "flashsale_gateway_shed_total",
            "Writes refused because the write queue was full or its deadline passed",
            registry=r,
        )
        # On the sold-out hot path: a plain count (see LoopCounter).
        self.sold_out_short_circuits = LoopCounter(
            "flashsale_gateway_sold_out_short_circuits",
            "Holds refused as sold out by the edge cache without reaching the leader",
            registry=r,
        )
        self.cache_index = Gauge(
            "flashsale_gateway_cache_ledger_index",
            "Ledger index the edge cache reflects",
            registry=r,
        )
        self.cache_caught_up = Gauge(
            "flashsale_gateway_cache_caught_up",
            "1 when the edge cache has applied everything its feed node had",
            registry=r,
        )
        self.feed_errors = Counter(
            "flashsale_gateway_feed_errors_total",
            "Failed feed requests (the follower then moves to another node)",
            registry=r,
        )
        self.bot_decisions = Counter(
            "flashsale_gateway_bot_decisions_total",
            "Bot-defence decisions: allowed, limited (429), challenged (403 challenge),"
            " blocked (403), queued (waiting room), by reason",
            ["decision", "reason"],
            registry=r,
        )
        self.bot_redis_fallback = Gauge(
            "flashsale_gateway_bot_redis_fallback",
            "1 while rate limits are decided by this gateway's local buckets because Redis"
            " failed or was slower than redis_timeout_ms",
            registry=r,
        )
        self.bot_redis_fallbacks = Counter(
            "flashsale_gateway_bot_redis_fallbacks",
            "Rate-limit decisions Redis failed to take in time (taken locally instead)",
            registry=r,
        )
        self.feed_resets = Counter(
            "flashsale_gateway_feed_snapshot_resets_total",
            "Times the edge cache was reset from a feed snapshot",
            registry=r,
        )
        self.gc_pause_seconds = pause_histogram("flashsale_gateway", r)

    def response(self) -> web.Response:
        """The Prometheus text exposition of every metric."""
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
