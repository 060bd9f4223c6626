"""The OpenAPI side of the bot defences: the 429/403 answers every guarded operation
may give (gateway.defences) and the internal bots API (gateway.bots_api)."""

from __future__ import annotations

from typing import Any

from bots.policy import LISTS
from bots.settings import SETTINGS
from gateway.defences import guarded

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
RATE_LIMITED = {
    "description": (
        "Rate limited (per client IP; on writes also per shopper and per token): "
        "retry after the Retry-After header's seconds (problem type rate-limited)"
    ),
    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    "content": _PROBLEM,
}
BLOCKED = (
    "; or blocked as a likely bot (problem type blocked, with its reasons: a block list "
    "or the heuristics' score)"
)
INTERNAL_SECURITY: list[dict[str, list[str]]] = [{"internalToken": []}]
INTERNAL_TOKEN_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "the cluster's internal token (cluster.auth.internal_token)",
}


def with_bot_problems(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with 429 and the blocked 403 on every operation the defences guard."""
    for path, operations in paths.items():
        if not guarded(path):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.setdefault("429", RATE_LIMITED)
            forbidden = responses.get("403")
            if forbidden is None:
                responses["403"] = {"description": "Blocked" + BLOCKED, "content": _PROBLEM}
            elif BLOCKED not in forbidden["description"]:
                responses["403"] = {**forbidden, "description": forbidden["description"] + BLOCKED}
    return paths


def _document_schema() -> dict[str, Any]:
    number = {"type": "number"}
    return {
        "type": "object",
        "required": ["enabled", "defences", "settings", "lists", "counts", "queue", "redis"],
        "properties": {
            "enabled": {"type": "boolean"},
            "defences": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "settings": {"type": "object", "properties": {n: number for n in SETTINGS}},
            "lists": {
                "type": "object",
                "properties": {n: {"type": "array", "items": {"type": "string"}} for n in LISTS},
            },
            "counts": {"type": "object", "description": "decisions, and by_reason"},
            "queue": {"type": "object", "description": "the waiting room's numbers"},
            "redis": {"type": "object", "description": "configured, ok"},
        },
    }


def bots_paths() -> dict[str, Any]:
    """The internal bots API (the console's; needs the internal token)."""
    ok = {
        "description": "the whole document",
        "content": {"application/json": {"schema": _document_schema()}},
    }
    problems = {
        "400": {"description": "A setting, list or value not accepted", "content": _PROBLEM},
        "401": {"description": "Missing or wrong internal token", "content": _PROBLEM},
        "409": {"description": "[bots] enabled = false on this gateway", "content": _PROBLEM},
    }
    settings = {
        name: {"type": "integer" if kind is int else "number", "minimum": lo, "maximum": hi}
        for name, (kind, lo, hi) in SETTINGS.items()
    }
    change = {
        "type": "object",
        "required": ["list", "op", "value"],
        "properties": {
            "list": {"type": "string", "enum": list(LISTS)},
            "op": {"type": "string", "enum": ["add", "remove"]},
            "value": {"type": "string", "description": "an IP, a CIDR network or a shopper"},
        },
    }

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    return {
        "/internal/bots": {
            "get": {
                "summary": "Bot defences: settings, lists, decision counts, queue, Redis",
                "security": INTERNAL_SECURITY,
                "responses": {"200": ok, "401": problems["401"]},
            }
        },
        "/internal/bots/settings": {
            "put": {
                "summary": "Change live settings (any subset)",
                "security": INTERNAL_SECURITY,
                "requestBody": body(
                    {"type": "object", "properties": settings, "additionalProperties": False}
                ),
                "responses": {"200": ok, **problems},
            }
        },
        "/internal/bots/lists": {
            "post": {
                "summary": "Add an entry to, or remove one from, a block or allow list",
                "security": INTERNAL_SECURITY,
                "requestBody": body(change),
                "responses": {"200": ok, **problems},
            }
        },
    }
