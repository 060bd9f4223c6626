"""The gateway's internal API for the console's bot page (docs/BOTS.md).

``GET /internal/bots`` shows the defences, live settings, lists, decision counts, the
waiting room and Redis; ``PUT /internal/bots/settings`` and ``POST /internal/bots/lists``
change this gateway's policy and answer the same document. With Redis configured the
change is stored there too and every gateway picks it up within about a second
(bots.policy_store); without Redis it is this process's alone (the console sends it to
every gateway). Every route needs ``Authorization: Bearer <internal token>``; anything
else is 401. Bad input is 400 problem+json, whatever was wrong with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bots.lists import ListFull, normalize
from bots.policy import LISTS, BotPolicy
from bots.settings import InvalidSetting, apply_settings, current_settings, parse_settings
from cluster.auth import check_bearer
from gateway import front_door
from gateway.defences import BOTS, BotDefences
from gateway.metrics import GatewayMetrics
from gateway.problems import bots_disabled, invalid_bot_settings, unauthorized
from gateway.state import STATE

DECISIONS = ("allowed", "limited", "challenged", "blocked", "queued")
DEFENCES = ("rate_limits", "challenge", "heuristics", "waiting_room")
MAX_BODY_BYTES = 4096  # a settings change or one list entry is far smaller
EMPTY_QUEUE: Mapping[str, Any] = {
    "issued": 0, "admitted": 0, "waiting": 0, "opens_at": None, "admission_rate": 0.0,
}  # fmt: skip


def _authorize(request: web.Request) -> None:
    if not check_bearer(request.headers.get("Authorization"), request.app[STATE].config.secret):
        raise unauthorized("the internal API needs the cluster's internal token")


def _counts(metrics: GatewayMetrics) -> dict[str, Any]:
    counts: dict[str, Any] = dict.fromkeys(DECISIONS, 0)
    by_reason: dict[str, int] = {}
    for family in metrics.bot_decisions.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            decision, reason = sample.labels["decision"], sample.labels["reason"]
            value = int(sample.value)
            counts[decision] = counts.get(decision, 0) + value
            by_reason[f"{decision}/{reason}"] = value
    counts["by_reason"] = by_reason
    return counts


def bots_document(app: web.Application) -> dict[str, Any]:
    """The whole ``GET /internal/bots`` document of this gateway."""
    state = app[STATE]
    config = state.config.bots
    bots = app.get(BOTS)
    policy = bots.policy if bots is not None else BotPolicy.from_config(config)
    queue: Mapping[str, Any] = EMPTY_QUEUE
    if bots is not None and bots.waiting_room is not None:
        queue = {**EMPTY_QUEUE, **bots.waiting_room.stats()}
    return {
        "enabled": config.enabled,
        "defences": {name: config.active(name) for name in DEFENCES},
        "settings": current_settings(policy),
        "lists": {name: list(policy.lists[name]) for name in LISTS},
        "counts": _counts(state.metrics),
        "queue": dict(queue),
        "redis": {
            "configured": bool(config.redis_url),
            "ok": bots is not None and bots.redis_ok,
        },
    }


def _json(body: Mapping[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _body(request: web.Request) -> dict[str, Any]:
    # read(n) answers what has arrived, up to n: a body in several TCP segments needs
    # several reads.
    raw = b""
    while len(raw) <= MAX_BODY_BYTES:
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > MAX_BODY_BYTES:
        raise invalid_bot_settings(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise invalid_bot_settings("the body is not JSON") from None
    if not isinstance(body, dict):
        raise invalid_bot_settings("expected a JSON object")
    return body


def _defences(request: web.Request) -> BotDefences:
    bots = request.app.get(BOTS)
    if bots is None:
        raise bots_disabled()
    return bots


async def get_bots(request: web.Request) -> web.Response:
    """GET /internal/bots."""
    _authorize(request)
    return _json(bots_document(request.app))


async def put_settings(request: web.Request) -> web.Response:
    """PUT /internal/bots/settings: any subset of the live settings."""
    _authorize(request)
    bots = _defences(request)
    try:
        changes = parse_settings(await _body(request))
    except InvalidSetting as exc:
        raise invalid_bot_settings(str(exc), field=exc.field) from None
    apply_settings(bots.policy, changes)
    if bots.store is not None:
        await bots.store.save_settings(changes)
    return _json(bots_document(request.app))


async def post_lists(request: web.Request) -> web.Response:
    """POST /internal/bots/lists: add an entry to or remove one from a list."""
    _authorize(request)
    bots = _defences(request)
    body = await _body(request)
    name, op, value = body.get("list"), body.get("op"), body.get("value")
    if set(body) - {"list", "op", "value"}:
        raise invalid_bot_settings("expected exactly list, op and value")
    if name not in LISTS or not isinstance(name, str):
        raise invalid_bot_settings(f"list: expected one of {list(LISTS)}", field="list")
    if op not in ("add", "remove"):
        raise invalid_bot_settings("op: expected 'add' or 'remove'", field="op")
    if not isinstance(value, str):
        raise invalid_bot_settings("value: expected a string", field="value")
    try:
        entry = normalize(name, value)
        if op == "add":
            bots.lists.add(name, entry)
        else:
            bots.lists.remove(name, entry)
    except ListFull as exc:
        raise invalid_bot_settings(str(exc), field="list") from None
    except ValueError as exc:
        raise invalid_bot_settings(str(exc), field="value") from None
    if bots.store is not None:
        if op == "remove":
            await bots.store.remove(name, entry)
        elif not await bots.store.add(name, entry, bots.lists.max_entries):
            bots.lists.remove(name, entry)  # full across the gateways: not added anywhere
            raise invalid_bot_settings(
                f"{name} holds {bots.lists.max_entries} entries (the maximum)", field="list"
            )
    return _json(bots_document(request.app))


def add_bots_api(app: web.Application) -> None:
    """The internal bots routes (present with the defences off too: GET says so)."""
    front_door.add_routes(
        app,
        [
            web.get("/internal/bots", get_bots, allow_head=False),
            web.put("/internal/bots/settings", put_settings),
            web.post("/internal/bots/lists", post_lists),
        ],
    )
