"""Live stock for shop pages: ``GET /events/inventory``, a Server-Sent Events stream.

Theory of operation: the edge cache already holds every product's stock at the newest
ledger index this gateway has seen. One ``InventoryBroadcast`` per gateway looks at the
cache's index every ``TICK_S``; when it moved, it encodes the products once into an SSE
frame (``event: inventory``, ``id:`` the ledger index) and wakes every open stream, which
writes those same bytes. So a page learns of a change within a tick of the gateway, at a
cost per change (not per shopper and second as with polling), and a busy sale sends at
most one frame per tick whatever the write rate. A stream starts with the current frame,
sends a comment line when idle for ``HEARTBEAT_S`` (proxies and browsers keep it open and
a gone client is noticed), and ends when the gateway shuts down (browsers reconnect on
their own after ``RETRY_MS``). Frames only ever carry what ``GET /products`` answers
publicly; the stream is read-only and needs no token.

``sse_frame`` and ``inventory_update`` are pure; the broadcast and the handler are the
shell.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from gateway import shapes
from gateway.edge_cache import EdgeCache
from gateway.problems import overloaded, unavailable

TICK_S = 0.25  # how often the cache's index is looked at (at most this many frames per s)
HEARTBEAT_S = 15.0  # an idle stream sends a comment this often
RETRY_MS = 2_000  # browsers reconnect after this when a stream ends
MAX_EVENT_STREAMS = 5_000  # open streams per gateway; beyond it: 503 (pages then poll)
MAX_STREAM_PRODUCTS = 100  # products per frame (a sale has a handful)
WRITE_TIMEOUT_S = 10.0  # a client that does not read for this long loses its stream


def sse_frame(event: str, data: Mapping[str, Any], *, event_id: int | None = None) -> bytes:
    """One Server-Sent Events message; ``data`` as compact JSON on one line."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    # json.dumps escapes control characters, so the data is one line whatever it holds.
    lines.append("data: " + json.dumps(data, separators=(",", ":"), sort_keys=True))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def inventory_update(products: Sequence[Mapping[str, Any]], index: int) -> dict[str, Any]:
    """The body of an ``inventory`` event: products with their terms and stock.

    Products whose terms the cache does not know yet (no name) are left out: a page
    could not show them; they come with a later frame.
    """
    known = [shapes.product(p) for p in products if isinstance(p.get("name"), str)]
    return {"ledger_index": index, "products": known[:MAX_STREAM_PRODUCTS]}


class InventoryBroadcast:
    """The one frame every stream of a gateway sends next; see the module docstring."""

    def __init__(
        self,
        cache: EdgeCache,
        *,
        tick_s: float = TICK_S,
        max_streams: int = MAX_EVENT_STREAMS,
    ) -> None:
        self._cache = cache
        self.tick_s = tick_s
        self.max_streams = max_streams
        self.streams = 0
        self.closing = False
        self.version = 0  # bumps with every new frame
        self.frame: bytes | None = None
        self._seen_index = -1
        self._changed = asyncio.Event()

    def refresh(self) -> bool:
        """Build a new frame if the cache moved since the last one; True when it did."""
        index = self._cache.index
        if index == self._seen_index:
            return False
        self._seen_index = index
        update = inventory_update(self._cache.products(), index)
        self.frame = sse_frame("inventory", update, event_id=index)
        self.version += 1
        self._wake()
        return True

    def _wake(self) -> None:
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    async def wait_newer(self, version: int, timeout_s: float) -> bool:
        """Wait until a frame newer than ``version`` exists (or closing); False on timeout."""
        while self.version <= version and not self.closing:
            changed = self._changed
            try:
                async with asyncio.timeout(timeout_s):
                    await changed.wait()
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        """End every stream (gateway shutdown)."""
        self.closing = True
        self._wake()

    async def run(self) -> None:
        """Look at the cache every tick until cancelled."""
        while True:
            self.refresh()
            await asyncio.sleep(self.tick_s)


async def _write(response: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await response.write(data)


async def stream_inventory(
    request: web.Request, broadcast: InventoryBroadcast
) -> web.StreamResponse:
    """Serve one ``GET /events/inventory`` stream until the client leaves or shutdown."""
    if broadcast.closing:
        raise unavailable("the gateway is shutting down")
    if broadcast.streams >= broadcast.max_streams:
        raise overloaded(
            f"at most {broadcast.max_streams} live stock streams per gateway; "
            "poll GET /products instead"
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # reverse proxies must not hold frames back
        }
    )
    broadcast.streams += 1
    try:
        await response.prepare(request)
        broadcast.refresh()
        version = broadcast.version
        await _write(response, f"retry: {RETRY_MS}\n\n".encode())
        if broadcast.frame is not None:
            await _write(response, broadcast.frame)
        while not broadcast.closing:
            if not await broadcast.wait_newer(version, HEARTBEAT_S):
                await _write(response, b": idle\n\n")
                continue
            if broadcast.closing or broadcast.frame is None:
                break
            version = broadcast.version
            await _write(response, broadcast.frame)
    except (ConnectionResetError, TimeoutError):
        pass  # the client left (or stopped reading): nothing more to send it
    finally:
        broadcast.streams -= 1
    return response
