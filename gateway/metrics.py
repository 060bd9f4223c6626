"""The gateway's Prometheus metrics, one registry per application.

A registry per application (rather than the process-global default) keeps two gateways
built in one test process from sharing counters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flashsale_gateway_requests_total",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flashsale_gateway_request_duration_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
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
        self.sold_out_short_circuits = Counter(
            "flashsale_gateway_sold_out_short_circuits_total",
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

    def response(self) -> web.Response:
        """The Prometheus text exposition of every metric."""
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def middleware(self) -> Middleware:
        """Counts and times every request; put it outside the problem middleware."""

        @web.middleware
        async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            route = _route_label(request)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.requests.labels(route, request.method, str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - started)

        return metrics_middleware


def _route_label(request: web.Request) -> str:
    """The route template (``/inventory/{product_id}``), never the raw path (unbounded)."""
    route = request.match_info.route
    if route.resource is None:
        return "unmatched"
    return route.resource.canonical
