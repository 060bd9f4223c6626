"""Server-Sent Events: one stream of snapshots from a hub to one open page.

The first event is the hub's latest snapshot (with ``first_extra`` merged in, e.g. the
chart history), then one ``snapshot`` event per publication. The stream ends with a
``session-ended`` event once the operator's session is over, and quietly when the hub
closes (shutdown) or the browser goes away.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from admin.app_keys import CLOCK_MS, METRICS, STORE, session_of
from admin.live import Snapshot, Subscriber, TooManySubscribers
from admin.security import UNAVAILABLE, problem
from admin.sessions import still_live

log = logging.getLogger("admin.live")

SSE_RETRY_MS = 2000  # how soon a browser reconnects a dropped stream


class SnapshotSource(Protocol):
    @property
    def latest(self) -> Snapshot | None: ...

    def subscribe(self) -> Subscriber: ...

    def unsubscribe(self, sub: Subscriber) -> None: ...


def event(name: str, data: Snapshot) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream(
    request: web.Request,
    source: SnapshotSource,
    first_extra: Callable[[], dict[str, Any]] = dict,
) -> web.StreamResponse:
    """Serve ``source``'s snapshots to this request until one side stops."""
    session = session_of(request)
    store, clock = request.app[STORE], request.app[CLOCK_MS]
    gauge = request.app[METRICS].live_streams
    try:
        sub = source.subscribe()
    except TooManySubscribers as exc:
        return problem(503, UNAVAILABLE, "Too many live streams", str(exc))
    gauge.inc()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
        first = source.latest or await sub.next()
        if first is not None:
            await response.write(event("snapshot", {**first, **first_extra()}))
        while first is not None:
            snapshot = await sub.next()
            if snapshot is None:
                break
            if not still_live(store, session, now_ms=clock()):
                await response.write(event("session-ended", {}))
                break
            await response.write(event("snapshot", snapshot))
    except ConnectionError:
        log.debug("live stream closed by the browser")
    finally:
        gauge.dec()
        source.unsubscribe(sub)
    return response
