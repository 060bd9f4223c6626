"""The shop front: ``GET /`` and its assets, guest sessions and live stock for the page.

Theory of operation: the page (gateway/static/shop.html with shop.js and shop.css) is
plain HTML and one script, served by the gateway itself (no CDN, nothing third-party),
read from the package once when the application is built. It talks only to the public
API of this same gateway: it gets a guest token (``POST /session/guest``, when guest
sessions are on; gateway.guest), lists products (``GET /products``), follows stock on
``GET /events/inventory`` (gateway.inventory_stream), and holds, checks out and pays
with the same requests any client makes.

The page and its assets carry a strict Content-Security-Policy: scripts, styles and
images from this origin only, no inline script or style, no eval, fetches to this origin
only, no framing, no form posts, and Trusted Types required, so a script that tried to
write HTML from a string (``innerHTML``) would fail in the browser. The script builds
every element with ``createElement`` and puts data in with ``textContent``. Assets are
revalidated (``ETag``) rather than cached blindly, so a new release is seen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib import resources

from aiohttp import web
from prometheus_client import Counter, Gauge

from gateway import front_door
from gateway.guest import guest_session_body, guest_sessions_disabled, guest_sessions_enabled
from gateway.inventory_stream import InventoryBroadcast, stream_inventory
from gateway.problems import Problem
from gateway.state import STATE, GatewayState

SHOP_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
SHOP_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": SHOP_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-cache",
}
HSTS = "max-age=31536000"
PAGE = "shop.html"
# Every file the gateway serves under /static/, with its type; anything else is a 404.
ASSET_TYPES: Mapping[str, str] = {
    "shop.js": "text/javascript; charset=utf-8",
    "shop.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def load_assets() -> dict[str, Asset]:
    """The page and every static file, read from the installed package."""
    static = resources.files("gateway") / "static"
    assets = {PAGE: _asset(static.joinpath(PAGE).read_bytes(), "text/html; charset=utf-8")}
    for name, content_type in ASSET_TYPES.items():
        assets[name] = _asset(static.joinpath(name).read_bytes(), content_type)
    return assets


@dataclass(frozen=True, slots=True)
class ShopFront:
    assets: Mapping[str, Asset]
    broadcast: InventoryBroadcast
    guests_issued: Counter


SHOP = web.AppKey("shop", ShopFront)


def _serve(request: web.Request, asset: Asset) -> web.Response:
    headers = dict(SHOP_HEADERS, ETag=asset.etag)
    if request.secure:
        headers["Strict-Transport-Security"] = HSTS
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    return web.Response(body=asset.body, headers=headers)


async def index(request: web.Request) -> web.Response:
    """GET /: the shop page."""
    return _serve(request, request.app[SHOP].assets[PAGE])


async def static_asset(request: web.Request) -> web.Response:
    """GET /static/{name}: one of the page's own files."""
    name = request.match_info["name"]
    asset = request.app[SHOP].assets.get(name) if name in ASSET_TYPES else None
    if asset is None:
        raise Problem(404, "not-found", "Not found", "no such file")
    return _serve(request, asset)


async def guest_session(request: web.Request) -> web.Response:
    """POST /session/guest: a token for a fresh random shopper (gateway.guest)."""
    config = request.app[STATE].config
    if not guest_sessions_enabled(config):
        raise guest_sessions_disabled()
    body = guest_session_body(config)
    request.app[SHOP].guests_issued.inc()
    return web.Response(
        status=201,
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def inventory_events(request: web.Request) -> web.StreamResponse:
    """GET /events/inventory: live stock as Server-Sent Events."""
    return await stream_inventory(request, request.app[SHOP].broadcast)


async def _broadcast(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(app[SHOP].broadcast.run(), name="stock-sse")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _end_streams(app: web.Application) -> None:
    # Runs before the server waits for in-flight requests: open streams end now
    # instead of holding the shutdown for its whole timeout.
    app[SHOP].broadcast.close()


def add_shop(app: web.Application, state: GatewayState) -> None:
    """Attach the shop page, its assets, guest sessions and the stock stream."""
    broadcast = InventoryBroadcast(state.cache)
    streams = Gauge(
        "flashsale_gateway_stock_streams",
        "Open GET /events/inventory streams",
        registry=state.metrics.registry,
    )
    streams.set_function(lambda: broadcast.streams)
    guests = Counter(
        "flashsale_gateway_guest_sessions_total",
        "Guest sessions issued by POST /session/guest",
        registry=state.metrics.registry,
    )
    app[SHOP] = ShopFront(assets=load_assets(), broadcast=broadcast, guests_issued=guests)
    front_door.add_routes(
        app,
        [
            web.get("/", index, allow_head=False),
            web.get("/static/{name}", static_asset, allow_head=False),
            web.post("/session/guest", guest_session),
            web.get("/events/inventory", inventory_events, allow_head=False),
        ],
    )
    app.cleanup_ctx.append(_broadcast)
    app.on_shutdown.append(_end_streams)
