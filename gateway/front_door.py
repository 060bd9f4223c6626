"""The gateway's front door: metrics, problem+json and overload shedding, one middleware.

Why one: every aiohttp middleware costs a partial, a coroutine and an await on every
request, and on the edge-cache fast paths (an inventory read, a sold-out refusal) three
of them cost a measurable share of the request (docs/BENCHMARKS.md). What they do is
unchanged, in the order the three separate middlewares had, outermost first:

1. metrics: every answer is counted and timed (gateway.metrics.RequestStats), refusals
   and problems included;
2. problem+json: every error leaving a handler, or the caps, becomes a problem
   (gateway.problems.problem_answer);
3. overload: a counted request over an in-flight cap is refused before any work
   (gateway.overload: 503 ``overloaded``), and leaves the count when answered.

Bot defences and admission (gateway.defences, gateway.admission) stay middlewares of
their own after this one, added only when ``[bots]`` turns them on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute

from gateway.metrics import GatewayMetrics, route_label
from gateway.overload import InFlight, Kind, request_kind
from gateway.problems import problem_answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def front_door(metrics: GatewayMetrics, in_flight: InFlight) -> Middleware:
    """The first middleware of the gateway application (see the module docstring)."""
    observe = metrics.requests.observe
    clock = time.perf_counter  # monotonic: also the adaptive write cap's clock
    # A matched route (one method of one resource) always has the same kind and label:
    # worked out once per route rather than from the path of every request. Bounded by
    # the application's routes; unmatched requests (404, 405) are not kept.
    known: dict[AbstractRoute, tuple[Kind | None, str]] = {}

    def classify(request: web.Request) -> tuple[Kind | None, str]:
        route = request.match_info.route
        found = known.get(route)
        if found is None:
            found = (request_kind(request.method, request.path), route_label(request))
            if route.resource is not None:
                known[route] = found
        return found

    @web.middleware
    async def front_door_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        status = 500
        kind, label = classify(request)
        try:
            try:
                if kind is None:
                    response = await handler(request)
                elif not in_flight.try_enter(kind, started):
                    response = in_flight.refusal(kind, request.path)
                else:
                    try:
                        response = await handler(request)
                    finally:
                        in_flight.leave(kind, clock() - started)
            except Exception as exc:
                answer = problem_answer(request, exc)
                if answer is None:
                    raise
                response = answer
            status = response.status
            return response
        except web.HTTPException as exc:  # below 400: a redirect, passed on
            status = exc.status
            raise
        finally:
            observe(label, request.method, status, clock() - started)

    return front_door_middleware
