"""Waiting-room admission and proof of work on writes (docs/BOTS.md).

Theory of operation: ``admission_guard`` runs after gateway.defences (lists, rate
limits, heuristics) and looks at writes only. With the waiting room on, every write
(add-to-cart, reserve-inventory, checkout, payment, release) needs ``X-Admission``, an
admission token of a ticket the room admitted (bots.room); with proof of work on, the
two hold routes also need ``X-Altcha``, a solution of a challenge from ``GET
/challenge`` (bots.challenge), accepted once (bots.replay). Admission is checked first:
a refused request does not use up its solution. Refusals are 403 problem+json that say
where to get what is missing, and are counted on ``bot_decisions`` (``queued`` or
``challenged``). A replayed solution and a write sooner than ``min_page_to_write_ms``
after its challenge was issued are reported to the heuristics (``Suspicion.note``).

Places in line are personal: ``POST /queue`` and ``GET /queue/{ticket}`` need the
shopper's bearer token (401 otherwise), tickets and admissions carry their holder, only
the holder may look a ticket up, and a write whose bearer user is not the admission's
holder is refused (403 ``admission-not-yours``): one admission serves one shopper, not a
farm of accounts. A shopper who queues again while holding a live ticket gets it back.

Routes: ``GET /challenge``, ``POST /queue`` and ``GET /queue/{ticket}``. The live
settings (difficulty, admission rate) are the ``BotPolicy`` of gateway.defences' state
when it is there (the console changes them), the ``[bots]`` numbers otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bots.addresses import client_key
from bots.challenge import ChallengeInvalid, challenge_key, new_challenge, verify
from bots.policy import BotPolicy
from bots.redis_link import key_prefix
from bots.replay import ReplayStore
from bots.room import AdmissionExpired, Place, QueueNotOpen, RoomUnavailable, WaitingRoom
from bots.tickets import InvalidTicket, queue_key
from bots.waiting_room import opening_s
from cluster.config import BotsConfig
from gateway import front_door
from gateway.defences import BOTS
from gateway.identity import InvalidToken, bearer_user
from gateway.metrics import GatewayMetrics
from gateway.problems import (
    Problem,
    admission_expired,
    admission_not_yours,
    admission_required,
    challenge_invalid,
    challenge_replayed,
    challenge_required,
    queue_not_open,
    ticket_invalid,
    unauthorized,
    unavailable,
)
from gateway.state import STATE, GatewayState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALTCHA_HEADER = "X-Altcha"
ADMISSION_HEADER = "X-Admission"
# (method, route template) of every write; the first two are holds (proof of work).
HOLDS = frozenset({("POST", "/add-to-cart"), ("POST", "/reserve-inventory")})
WRITES = HOLDS | {
    ("POST", "/checkout"),
    ("POST", "/payment"),
    ("DELETE", "/cart/{cart_id}/items/{hold_id}"),
}
NO_STORE = {"Cache-Control": "no-store"}
STATS_REFRESH_S = 1.0  # the console's queue numbers are at most this old


@dataclass(slots=True)
class Gate:
    """What the guard and the routes share (one per gateway application)."""

    config: BotsConfig
    secret: str
    policy: BotPolicy
    challenge_key: bytes
    replay: ReplayStore
    room: WaitingRoom
    metrics: GatewayMetrics


GATE = web.AppKey("admission", Gate)


def _json(body: Mapping[str, Any], *, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
        content_type="application/json",
        headers=NO_STORE,
    )


def _write_kind(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    key = (request.method, resource.canonical)
    if key in HOLDS:
        return "hold"
    return "write" if key in WRITES else None


def _shopper(gate: Gate, request: web.Request) -> str | None:
    try:
        return bearer_user(gate.secret, request.headers.get("Authorization"))
    except InvalidToken:
        return None


def _note(request: web.Request, gate: Gate, signal: str, now: float) -> None:
    """Tell the heuristics (gateway.defences' Suspicion), when they are there."""
    bots = request.app.get(BOTS)
    if bots is not None:
        client = client_key(request.remote or "")
        bots.suspicion.note(client, _shopper(gate, request), signal, now)


def _refuse(gate: Gate, decision: str, reason: str, problem: Problem) -> Problem:
    gate.metrics.bot_decisions.labels(decision, reason).inc()
    return problem


def _check_admission(gate: Gate, request: web.Request, now: float) -> None:
    text = request.headers.get(ADMISSION_HEADER)
    if not text:
        raise _refuse(gate, "queued", "admission-missing",
                      admission_required(f"writes need {ADMISSION_HEADER}"))  # fmt: skip
    try:
        admission = gate.room.admission(text.strip(), now)
    except InvalidTicket as exc:
        reason = "admission-expired" if exc.expired else "admission-invalid"
        raise _refuse(gate, "queued", reason, admission_required(exc.reason)) from None
    shopper = _shopper(gate, request)
    if shopper is None:  # every write needs one anyway; answer before a solution is spent
        raise unauthorized("writes need the shopper's bearer token")
    if admission.holder != gate.room.holder(shopper):
        raise _refuse(gate, "queued", "admission-not-yours", admission_not_yours())


async def _check_challenge(gate: Gate, request: web.Request, now: float) -> None:
    payload = request.headers.get(ALTCHA_HEADER)
    if not payload:
        raise _refuse(gate, "challenged", "challenge-missing", challenge_required())
    try:
        solved = verify(gate.challenge_key, payload, now=now)
    except ChallengeInvalid as exc:
        raise _refuse(
            gate, "challenged", "challenge-invalid", challenge_invalid(exc.reason)
        ) from None
    if not await gate.replay.claim(solved.challenge, solved.expires_s, now):
        _note(request, gate, "solution-replay", now)
        raise _refuse(gate, "challenged", "challenge-replayed", challenge_replayed())
    if (now - solved.issued_s) * 1000 < gate.config.min_page_to_write_ms:
        _note(request, gate, "fast-write", now)


async def admission_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admission token on writes, proof of work on holds (see the module docstring)."""
    gate = request.app.get(GATE)
    kind = None if gate is None else _write_kind(request)
    if gate is None or kind is None:
        return await handler(request)
    now = time.time()
    if gate.config.active("waiting_room"):
        _check_admission(gate, request, now)
    if kind == "hold" and gate.config.active("challenge"):
        await _check_challenge(gate, request, now)
    return await handler(request)


# -- routes ----------------------------------------------------------------------------


async def get_challenge(request: web.Request) -> web.Response:
    """GET /challenge: a proof-of-work challenge (ALTCHA v1 JSON), never cached."""
    gate = request.app[GATE]
    if not gate.config.active("challenge"):
        raise Problem(404, "not-found", "Not found", "proof of work is off on this gateway")
    now = time.time()
    challenge = new_challenge(
        gate.challenge_key,
        max_number=gate.policy.challenge_difficulty,
        now=now,
        ttl_s=gate.config.challenge_ttl_s,
    )
    # A person takes longer than this from a page to a write; the shop page waits until
    # then before it uses the solution (a fast clicker is not taken for a script).
    challenge["use_after_ms"] = int(now * 1000) + gate.config.min_page_to_write_ms
    return _json(challenge)


def _opening(request: web.Request, now: float) -> float | None:
    return opening_s(request.app[STATE].cache.products(), now)


def _place_answer(place: Place, *, status: int = 200) -> web.Response:
    return _json(place.body(), status=status)


def _queue_off() -> web.Response:
    # No waiting room: everyone is in, and writes need no token.
    return _json({
        "ticket": None, "position": 0, "estimated_wait_s": 0.0, "admitted": True,
        "admission": None, "admission_expires_at_ms": None, "opens_at_ms": None,
    })  # fmt: skip


def _queuer(gate: Gate, request: web.Request) -> str:
    """The shopper of the bearer token (401 without one: places in line are personal)."""
    shopper = _shopper(gate, request)
    if shopper is None:
        raise unauthorized(
            "the waiting room needs the shopper's bearer token (a place in line is "
            "personal): sign in, or get a guest token with POST /session/guest"
        )
    return shopper


async def join_queue(request: web.Request) -> web.Response:
    """POST /queue: the shopper's place in line (201): its live ticket, else a new one at
    the back, with its position and wait."""
    gate = request.app[GATE]
    shopper = _queuer(gate, request)
    if not gate.config.active("waiting_room"):
        return _queue_off()
    now = time.time()
    try:
        place = await gate.room.join(now, _opening(request, now), shopper)
    except QueueNotOpen as exc:
        raise queue_not_open(
            int(exc.queue_opens_at * 1000),
            int(exc.opens_at * 1000),
            max(1, math.ceil(exc.queue_opens_at - now)),
        ) from None
    if not place.admitted:
        gate.metrics.bot_decisions.labels("queued", "waiting").inc()
    return _place_answer(place, status=201)


async def queue_status(request: web.Request) -> web.Response:
    """GET /queue/{ticket}: position and wait; the admission token once admitted."""
    gate = request.app[GATE]
    shopper = _queuer(gate, request)
    if not gate.config.active("waiting_room"):
        return _queue_off()
    now = time.time()
    ticket = request.match_info["ticket"]
    try:
        place = await gate.room.look(ticket, now, _opening(request, now), shopper)
    except InvalidTicket as exc:
        raise ticket_invalid(exc.reason) from None
    except AdmissionExpired:
        raise admission_expired() from None
    except RoomUnavailable:
        raise unavailable("the shared waiting room is not reachable; retry shortly") from None
    return _place_answer(place)


# -- wiring ----------------------------------------------------------------------------


def add_admission(app: web.Application, state: GatewayState) -> None:
    """Attach the routes and the guard (when a defence of its is on).

    Call after gateway.defences has put its state on the app (its policy is shared)."""
    config = state.config.bots
    bots = app.get(BOTS)  # absent when [bots] enabled = false
    policy = bots.policy if bots is not None else BotPolicy.from_config(config)
    redis = bots.redis if bots is not None else None  # one client per gateway: defences'
    prefix = key_prefix(state.config.name)
    timeout_s = config.redis_timeout_ms / 1000
    gate = Gate(
        config=config,
        secret=state.config.secret,
        policy=policy,
        challenge_key=challenge_key(state.config.secret),
        replay=ReplayStore(
            redis=redis,
            prefix=prefix,
            timeout_s=timeout_s,
        ),
        room=WaitingRoom(
            queue_key(state.config.secret), policy, config, redis=redis, prefix=prefix
        ),
        metrics=state.metrics,
    )
    app[GATE] = gate
    if bots is not None:
        bots.waiting_room = gate.room  # the internal API's "queue" numbers
    if config.active("challenge") or config.active("waiting_room"):
        front_door.add_guard(app, admission_guard)
    front_door.add_routes(
        app,
        [
            web.get("/challenge", get_challenge, allow_head=False),
            web.post("/queue", join_queue),
            web.get("/queue/{ticket}", queue_status, allow_head=False),
        ],
    )
    if config.active("waiting_room"):
        app.cleanup_ctx.append(_stats_refresher)


async def _refresh_stats(app: web.Application) -> None:
    room = app[GATE].room
    while True:
        await asyncio.sleep(STATS_REFRESH_S)
        now = time.time()
        await room.refresh(now, opening_s(app[STATE].cache.products(), now))


async def _stats_refresher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_refresh_stats(app), name="queue-stats")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
