"""Lists, rate limits and heuristics in front of every shopper-facing request.

Theory of operation: ``add_defences`` puts one ``BotDefences`` on the app (``BOTS``)
and adds ``defences_guard`` to the front door (gateway.front_door), only when ``[bots]
enabled``; otherwise the gateway carries nothing of it. For each guarded request
(everything but health, readiness, metrics, static assets, payment providers' webhooks
and ``/internal/*``), in order:

1. lists: a block-listed IP (or network) or shopper gets 403 ``blocked``; an
   allow-listed one skips the rest (gateway.admission still applies);
2. rate limits: one token from the client IP's bucket on every request, and on writes
   also from the shopper's (the bearer token's user) and the token's own, all or none;
   an empty bucket answers 429 ``rate-limited`` with Retry-After;
3. heuristics: the request's score (bots.heuristics); at the policy's block_score or
   above, 403 ``blocked`` with the reasons.

Every outcome is counted on ``bot_decisions``. The client IP is ``request.remote``: the
peer of the connection, or, when that peer is one of ``[gateway] trusted_proxies``, the
shopper it names in X-Forwarded-For (gateway.forwarded, the guard before this one);
otherwise the header is not believed (anyone can send it), see docs/BOTS.md.
Loopback gets no exemption, not even in development mode: the demo's one shopper fits
the per-IP bucket with a wide margin (docs/BOTS.md), and an exemption is exactly what a
misconfigured production (a proxy on the same host) would turn into no limits at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from redis.asyncio import Redis

from bots.addresses import client_key
from bots.buckets import Limit
from bots.heuristics import Suspicion
from bots.limiter import Limiter
from bots.lists import BotLists
from bots.local_limiter import LocalLimiter
from bots.policy import BotPolicy
from bots.policy_store import REFRESH_S, PolicyStore
from bots.redis_limiter import RedisLimiter
from bots.redis_link import key_prefix, redis_client
from gateway import front_door
from gateway.identity import InvalidToken, bearer_user
from gateway.metrics import GatewayMetrics
from gateway.problems import blocked, rate_limited
from gateway.state import GatewayState

log = logging.getLogger("gateway.defences")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Never guarded: probes and scrapes, the page's static files (the page itself is), the
# payment providers' signed webhooks (retried by them, bursty by nature) and the
# internal API (its own bearer token).
UNGUARDED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UNGUARDED_PREFIXES = ("/static/", "/internal/", "/webhooks/")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class WaitingRoomStats(Protocol):
    """What the internal API needs of the waiting room (gateway.admission sets it)."""

    def stats(self) -> Mapping[str, Any]: ...


@dataclass(slots=True)
class BotDefences:
    """The bot defences of one gateway app (``app[BOTS]``)."""

    policy: BotPolicy
    limiter: Limiter
    suspicion: Suspicion
    lists: BotLists
    metrics: GatewayMetrics
    secret: str
    redis: Redis | None = None
    store: PolicyStore | None = None
    waiting_room: WaitingRoomStats | None = None

    @property
    def redis_ok(self) -> bool:
        """Redis is configured and both the limiter and the policy store reach it."""
        return (
            self.redis is not None
            and self.limiter.redis_ok
            and (self.store is None or self.store.ok)
        )

    def count(self, decision: str, reason: str) -> None:
        self.metrics.bot_decisions.labels(decision, reason).inc()


BOTS = web.AppKey("bots", BotDefences)


def guarded(path: str) -> bool:
    """True when the defences apply to a request for ``path``."""
    return path not in UNGUARDED_PATHS and not path.startswith(UNGUARDED_PREFIXES)


def _bearer(secret: str, authorization: str | None) -> tuple[str | None, str | None]:
    """(shopper, token key) of a valid bearer token; (None, None) otherwise.

    The token key is the token's signature: unique per token, and no secret."""
    if not authorization:
        return None, None
    try:
        shopper = bearer_user(secret, authorization)
    except InvalidToken:
        return None, None
    return shopper, authorization.strip().rsplit(".", 1)[-1]


async def defences_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Lists, then rate limits, then heuristics (see the module docstring)."""
    if not guarded(request.path):
        return await handler(request)
    bots = request.app[BOTS]
    ip = request.remote or "unknown"
    shopper, token = _bearer(bots.secret, request.headers.get("Authorization"))
    if bots.lists.blocked(ip, shopper):
        bots.count("blocked", "block-list")
        raise blocked(["block-list"])
    if bots.lists.allowed(ip, shopper):
        bots.count("allowed", "allow-list")
        return await handler(request)
    policy = bots.policy
    config = policy.config
    client = client_key(ip)  # an IPv6 client by its /64 (bots.addresses)
    if policy.active("rate_limits"):
        limits = [Limit("ip", client, config.ip_rate, config.ip_burst)]
        if request.method not in READ_METHODS and shopper is not None and token is not None:
            limits.append(Limit("shopper", shopper, config.shopper_rate, config.shopper_burst))
            limits.append(Limit("token", token, config.token_rate, config.token_burst))
        verdict = await bots.limiter.take(limits)
        if not verdict.allowed:
            kind = verdict.kind or "ip"
            bots.count("limited", f"{kind}-rate")
            raise rate_limited(verdict.retry_after_s, kind)
    if policy.active("heuristics"):
        score, reasons = bots.suspicion.assess(
            client, shopper, request.headers.get("User-Agent"), time.time(), config.accounts_per_ip
        )
        if score >= policy.block_score:
            bots.count("blocked", "score")
            raise blocked(list(reasons), score)
    bots.count("allowed", "passed")
    return await handler(request)


def bot_defences(state: GatewayState) -> BotDefences:
    """The defences of a gateway from its config (Redis client made, not yet used)."""
    config = state.config.bots
    policy = BotPolicy.from_config(config)
    lists = BotLists(policy, config.max_list_entries)
    metrics = state.metrics
    redis = redis_client(config.redis_url) if config.redis_url else None
    prefix = key_prefix(state.config.name)
    limiter = Limiter(
        LocalLimiter(config.max_tracked_clients),
        RedisLimiter(redis, prefix) if redis is not None else None,
        timeout_s=config.redis_timeout_ms / 1000,
        on_fallback=metrics.bot_redis_fallbacks.inc,
    )
    metrics.bot_redis_fallback.set_function(lambda: 1.0 if limiter.falling_back else 0.0)
    return BotDefences(
        policy=policy,
        limiter=limiter,
        suspicion=Suspicion(
            accounts_window_s=config.accounts_window_s,
            max_clients=config.max_tracked_clients,
        ),
        lists=lists,
        metrics=metrics,
        secret=state.config.secret,
        redis=redis,
        store=PolicyStore(redis, prefix, policy, lists) if redis is not None else None,
    )


def add_defences(app: web.Application, state: GatewayState) -> None:
    """Put the defences on ``app`` when ``[bots] enabled`` (call before add_admission,
    whose guard must run after this one)."""
    if not state.config.bots.enabled:
        return
    app[BOTS] = bot_defences(state)
    front_door.add_guard(app, defences_guard)
    app.cleanup_ctx.append(_shared_policy)


async def _follow(bots: BotDefences) -> None:
    """Refresh the shared policy every REFRESH_S; a Redis that answers it again also ends
    the limiter's fallback sooner (its next request tries Redis)."""
    assert bots.store is not None
    while True:
        await asyncio.sleep(REFRESH_S)
        if await bots.store.refresh():
            bots.limiter.redis_answered()


async def _shared_policy(app: web.Application) -> AsyncIterator[None]:
    """Load the shared settings and lists, follow them, close Redis at the end."""
    bots = app[BOTS]
    task: asyncio.Task[None] | None = None
    if bots.store is not None:
        if not await bots.store.refresh():
            log.warning("redis unreachable at start: bot settings and lists are local for now")
        task = asyncio.get_running_loop().create_task(_follow(bots), name="bots-policy")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if bots.redis is not None:
        await bots.redis.aclose()
