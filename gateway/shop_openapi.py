"""The OpenAPI description of the shop front's routes (gateway.shop), merged into
gateway.openapi's document: the page, its assets, guest sessions and the stock stream."""

from __future__ import annotations

from typing import Any

from gateway.guest import GUEST_PREFIX
from gateway.inventory_stream import MAX_EVENT_STREAMS, MAX_STREAM_PRODUCTS, RETRY_MS
from gateway.shop import ASSET_TYPES, SHOP_CSP

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": _PROBLEM}


def shop_paths() -> dict[str, Any]:
    """The ``paths`` entries of the shop front."""
    guest = {
        "type": "object",
        "required": ["user_id", "token", "token_type", "expires_at", "expires_at_ms", "now_ms"],
        "properties": {
            "user_id": {"type": "string", "description": f"a fresh id, {GUEST_PREFIX}<hex>"},
            "token": {"type": "string", "description": "send as Authorization: Bearer <token>"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_at": {"type": "string", "format": "date-time"},
            "expires_at_ms": {"type": "integer"},
            "now_ms": {"type": "integer", "description": "the gateway's clock (countdowns)"},
        },
    }
    return {
        "/": {
            "get": {
                "summary": "The shop page (HTML; every asset served by this gateway)",
                "description": f"Content-Security-Policy: {SHOP_CSP}",
                "responses": {
                    "200": {"description": "the page", "content": {"text/html": {}}},
                    "304": {"description": "unchanged (If-None-Match)"},
                },
            }
        },
        "/static/{name}": {
            "get": {
                "summary": "One of the shop page's own files",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(ASSET_TYPES)},
                    }
                ],
                "responses": {
                    "200": {"description": "the file"},
                    "304": {"description": "unchanged (If-None-Match)"},
                    "404": _problem("No such file"),
                },
            }
        },
        "/session/guest": {
            "post": {
                "summary": "A bearer token for a fresh random shopper (the demo shop)",
                "description": (
                    "On in development mode, off in production unless "
                    "[gateway] guest_sessions = true."
                ),
                "responses": {
                    "201": {
                        "description": "the new guest",
                        "content": {"application/json": {"schema": guest}},
                    },
                    "403": _problem("Guest sessions are off on this gateway"),
                },
            }
        },
        "/events/inventory": {
            "get": {
                "summary": "Live stock as Server-Sent Events (from the edge cache)",
                "description": (
                    "`event: inventory`, `id:` the ledger index, `data:` "
                    '{"ledger_index", "products": [Product, ...]} (at most '
                    f"{MAX_STREAM_PRODUCTS} products), sent on connect and whenever the "
                    f"stock moves; `retry: {RETRY_MS}`. At most {MAX_EVENT_STREAMS} streams "
                    "per gateway."
                ),
                "responses": {
                    "200": {
                        "description": "the stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "503": _problem("Too many streams (poll GET /products) or shutting down"),
                },
            }
        },
    }
