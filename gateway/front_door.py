"""The gateway's front door: metrics, problem+json, overload shedding and the guards,
around every route's handler.

Every request, answered or refused, passes through it, in this order, outermost first:

1. metrics: every answer is counted and timed (gateway.metrics.RequestStats), refusals
   and problems included;
2. problem+json: every error leaving a handler, a guard or the caps becomes a problem
   (gateway.problems.problem_answer);
3. overload: a counted request over an in-flight cap is refused before any work
   (gateway.overload: 503 ``overloaded``), and leaves the count when answered;
4. the guards, in the order they were added: the bot defences (gateway.defences) and
   admission (gateway.admission), only when ``[bots]`` turns them on;
5. the route's handler.

Why not aiohttp middlewares: an application with any middleware wraps every request in
one more of aiohttp's own (``_fix_request_current_app``) plus a partial, a coroutine and
an await per middleware (a pass-through one cost the bare handler about a tenth of its
rate). Here each route's entry is one coroutine that knows its route's kind and metrics
label from the start, and the gateway application has no middleware at all: a few per
cent more inventory reads and sold-out refusals per second (docs/BENCHMARKS.md, third
pass).

Routes are registered through ``add_routes`` (a route added with ``app.router`` directly
would bypass all of the above), guards through ``add_guard`` before the application
starts. Requests no route matches reach ``add_fallback``'s catch-all route, last, which
answers 404 or 405 (with ``Allow``) through the same door, so they are problem+json,
counted (label ``unmatched``) and guarded like any other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Protocol

from aiohttp import hdrs, web

from gateway.metrics import GatewayMetrics
from gateway.overload import InFlight, Kind, request_kind
from gateway.problems import problem_answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard(Protocol):
    """An aiohttp middleware's signature: answer, raise, or call ``handler``."""

    def __call__(self, request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]: ...


UNMATCHED_LABEL = "unmatched"  # the metrics label of requests no route matches
FALLBACK_PATH = "/{unmatched_path:.*}"


class FrontDoor:
    """What every request of one gateway application passes through (module docstring)."""

    def __init__(self, metrics: GatewayMetrics, in_flight: InFlight) -> None:
        self._observe = metrics.requests.observe
        self._in_flight = in_flight
        self._guards: list[Guard] = []
        # (handler, the cell its entry calls): the cell gets the guards at startup.
        self._cells: list[tuple[Handler, list[Handler]]] = []
        self._sealed = False
        self._fallback: web.AbstractRoute | None = None

    def add_guard(self, guard: Guard) -> None:
        """Run ``guard`` inside the door, around every route's handler (also the ones
        added earlier), after the guards added before it."""
        if self._sealed:
            raise RuntimeError("guards are added before the application starts")
        self._guards.append(guard)

    def add_routes(self, router: web.UrlDispatcher, routes: Iterable[web.RouteDef]) -> None:
        """Register ``routes`` with their handlers behind the door."""
        if self._fallback is not None:
            raise RuntimeError("routes are added before the fallback")
        for definition in routes:
            handler = definition.handler
            if isinstance(handler, type):
                raise TypeError(f"{definition.path}: class-based views are not routed here")
            self._add(router, definition.method, definition.path, handler, dict(definition.kwargs))

    def add_fallback(self, router: web.UrlDispatcher) -> None:
        """The catch-all route for requests no other route matches (add it last)."""
        self._fallback = self._add(router, "*", FALLBACK_PATH, self._unmatched, {})

    def seal(self) -> None:
        """Put the guards in every entry (on startup: no guard can be added after)."""
        if self._fallback is None:
            raise RuntimeError("the front door has no fallback route (add_fallback)")
        self._sealed = True
        for handler, cell in self._cells:
            chained = handler
            for guard in reversed(self._guards):
                chained = partial(guard, handler=chained)
            cell[0] = chained

    def _add(
        self,
        router: web.UrlDispatcher,
        method: str,
        path: str,
        handler: Handler,
        kwargs: dict[str, object],
    ) -> web.AbstractRoute:
        observe = self._observe
        in_flight = self._in_flight
        clock = time.perf_counter  # monotonic: also the adaptive write cap's clock
        unmatched = path == FALLBACK_PATH
        # A route (one method of one resource) always has the same kind and label.
        kind: Kind | None = None if unmatched else request_kind(method, path)
        label = UNMATCHED_LABEL  # the resource's template once it is registered, below
        cell: list[Handler] = [handler]  # the guards go in at startup (seal)
        self._cells.append((handler, cell))

        async def entry(request: web.Request) -> web.StreamResponse:
            started = clock()
            status = 500
            try:
                try:
                    if kind is None:
                        response = await cell[0](request)
                    elif not in_flight.try_enter(kind, started):
                        response = in_flight.refusal(kind, request.path)
                    else:
                        try:
                            response = await cell[0](request)
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

        # As RouteDef.register does: add_get's allow_head (a HEAD route, same entry).
        add = getattr(router, f"add_{method.lower()}") if method in hdrs.METH_ALL else None
        if add is not None:
            route: web.AbstractRoute = add(path, entry, **kwargs)
        else:
            route = router.add_route(method, path, entry, **kwargs)  # type: ignore[arg-type]
        if not unmatched and route.resource is not None:
            label = route.resource.canonical  # never the raw path: unbounded
        return route

    async def _unmatched(self, request: web.Request) -> web.StreamResponse:
        """404, or 405 with the methods the path's routes allow (what aiohttp's router
        answers without a catch-all)."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if self._fallback is not None and resource is self._fallback.resource:
                continue
            _, methods = await resource.resolve(request)
            allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()


FRONT_DOOR = web.AppKey("front_door", FrontDoor)


def install(app: web.Application, door: FrontDoor) -> None:
    """Make ``door`` the front door of ``app`` (before any route is added)."""
    app[FRONT_DOOR] = door

    async def seal(app: web.Application) -> None:
        door.seal()

    app.on_startup.append(seal)


def add_routes(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """Register ``routes`` behind ``app``'s front door (see ``install``)."""
    app[FRONT_DOOR].add_routes(app.router, routes)


def add_guard(app: web.Application, guard: Guard) -> None:
    """Run ``guard`` inside ``app``'s front door (see ``FrontDoor.add_guard``)."""
    app[FRONT_DOOR].add_guard(guard)


def add_fallback(app: web.Application) -> None:
    """Add ``app``'s catch-all route (last: see ``FrontDoor.add_fallback``)."""
    app[FRONT_DOOR].add_fallback(app.router)
