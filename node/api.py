"""The node's internal HTTP API (gateways, CLI, console and tools use it).

Theory of operation: one ``web.Application`` per node process, built by ``make_app``. A
cleanup context starts the Raft node (state loaded before the first request is served),
the proposal bridge, the feed and the expiry ticker, and stops them in reverse order after
the last in-flight request finished. Three middlewares: errors become
``application/problem+json`` (RFC 9457), every path but ``/healthz`` and ``/metrics``
needs the internal bearer token, and at most so many submits, reads and feed long-polls
are handled at once (node.admission): one more is answered 503 overloaded + Retry-After.

Writes: ``POST /v1/commands`` decodes every command (400 names the bad one), re-encodes
it canonically and proposes the whole batch as one Raft entry on the leader. A follower
answers 421 with the leader it knows (503 no-leader when it knows none). An outcome the
node cannot confirm is 503 commit-unknown: retry with the same idempotency keys.
Reads come from this node's local ledger (ask the leader to read your own writes);
``GET /v1/orders?id=A&id=B`` reads several orders at one index (a gateway's /payment reads).
The feed (``GET /v1/feed``) serves committed events by ledger index, long-polls, and
starts a reader that is too far behind with a snapshot of the state.
Membership (``POST /v1/membership``, leader only) adds or removes one Raft member at a
time (node.membership); ``/v1/status`` lists the members as this node sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cluster.auth import check_bearer
from cluster.config import ClusterConfig, ConfigError, NodeConfig, parse_hostport
from cluster.errors import (
    COMMIT_UNKNOWN,
    INVALID_COMMAND,
    MEMBERSHIP_REFUSED,
    NO_LEADER,
    NOT_FOUND,
    NOT_LEADER,
    OVERLOADED,
    PROBLEM_BASE,
    UNAUTHORIZED,
)
from ledger.codec import (
    DecodeError,
    decode_command,
    encode_command,
    encode_event,
    encode_result,
    encode_view,
)
from ledger.limits import MAX_COMMANDS_PER_ENTRY, MAX_ID_LEN
from node.admission import KINDS, RETRY_AFTER_S, Admission, AdmissionLimits, kind_of
from node.expiry import ExpiryTicker
from node.feed import MAX_FEED_PAGE_EVENTS, MAX_FEED_WAIT_MS, Feed, FeedPage
from node.membership import ACTIONS, Changed, Membership, Refused
from node.metrics import NodeMetrics
from node.proposals import Committed, NotLeader, Overloaded, Proposals
from node.raft import RaftNode, desired_settings
from node.settings_sync import SettingsSync

log = logging.getLogger("node.api")

PROBLEM_JSON = "application/problem+json"
INVALID_REQUEST = PROBLEM_BASE + "invalid-request"
PAYLOAD_TOO_LARGE = PROBLEM_BASE + "payload-too-large"
INTERNAL_ERROR = PROBLEM_BASE + "internal-error"
UNAVAILABLE = PROBLEM_BASE + "unavailable"
_TYPE_BY_STATUS = {400: INVALID_REQUEST, 413: PAYLOAD_TOO_LARGE, 503: UNAVAILABLE}

MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024  # one batch of at most MAX_COMMANDS_PER_ENTRY commands
DEFAULT_FEED_LIMIT = 1000  # events per feed page when the reader does not say
MAX_ORDERS_PER_READ = 200  # ids one GET /v1/orders may ask for
NO_LEADER_RETRY_AFTER_S = 1  # an election takes well under a second
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/metrics"})


@dataclass(slots=True)
class NodeServices:
    """What the handlers use, built by the cleanup context once the node is up."""

    config: ClusterConfig
    node_id: str
    raft: RaftNode
    feed: Feed
    proposals: Proposals
    metrics: NodeMetrics
    membership: Membership
    started_monotonic: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class NodeRuntime:
    """Mutable holder in the (frozen) app: services exist between startup and cleanup."""

    config: ClusterConfig
    node_id: str
    services: NodeServices | None = None

    def require(self) -> NodeServices:
        if self.services is None:
            raise web.HTTPServiceUnavailable(reason="node starting or stopping")
        return self.services


RUNTIME = web.AppKey("runtime", NodeRuntime)
ADMISSION = web.AppKey("admission", Admission)


def problem(
    status: int,
    type_: str,
    title: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 9457 problem response."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status, headers=headers, content_type=PROBLEM_JSON)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as problem+json."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_ = _TYPE_BY_STATUS.get(exc.status, "about:blank")
        return problem(exc.status, type_, exc.reason, exc.text if exc.text != exc.reason else None)
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        return problem(500, INTERNAL_ERROR, "Internal error", "see the node's log")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The internal bearer token, on every path but health and metrics."""
    if request.path not in UNAUTHENTICATED_PATHS:
        secret = request.app[RUNTIME].config.secret
        if not check_bearer(request.headers.get("Authorization"), secret):
            return problem(
                401,
                UNAUTHORIZED,
                "Unauthorized",
                "a valid 'Authorization: Bearer <internal token>' header is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """At most so many submits, reads and feed long-polls at once (node.admission); one
    more is refused before its body is read: 503 overloaded + Retry-After."""
    kind = kind_of(request.method, request.path)
    if kind is None:
        return await handler(request)
    admission = request.app[ADMISSION]
    services = request.app[RUNTIME].services
    if not admission.try_enter(kind):
        if services is not None:
            services.metrics.admission_refused.labels(kind=kind).inc()
        return problem(
            503,
            OVERLOADED,
            "Overloaded",
            f"more than {admission.limits.limit(kind)} {kind} requests at once; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    try:
        return await handler(request)
    finally:
        admission.leave(kind)


# -- writes ---------------------------------------------------------------------------------


async def post_commands(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        return problem(400, INVALID_COMMAND, "Invalid request body", f"not JSON: {exc}")
    raw = body.get("commands") if isinstance(body, dict) else None
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_COMMANDS_PER_ENTRY:
        return problem(
            400,
            INVALID_COMMAND,
            "Invalid request body",
            f'expected {{"commands": [1..{MAX_COMMANDS_PER_ENTRY} command objects]}}',
        )
    commands: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        try:
            encoded = dict(encode_command(decode_command(item)))
        except DecodeError as exc:
            return problem(400, INVALID_COMMAND, "Invalid command", str(exc), command_index=i)
        encoded.pop("at_ms", None)  # the leader stamps its own clock
        commands.append(encoded)
    outcome = await s.proposals.propose(commands)
    if isinstance(outcome, Committed):
        applied = outcome.applied
        return web.json_response(
            {"index": applied.index, "results": [encode_result(r) for r in applied.results]}
        )
    if isinstance(outcome, NotLeader):
        return _not_leader(s, outcome.leader)
    if isinstance(outcome, Overloaded):
        return problem(
            503,
            OVERLOADED,
            "Overloaded",
            f"not proposed: {outcome.reason}",
            headers={"Retry-After": str(outcome.retry_after_s)},
        )
    return problem(
        503,
        COMMIT_UNKNOWN,
        "Commit unknown",
        f"the batch may or may not be applied ({outcome.reason}); "
        "retry with the same idempotency keys",
    )


def _not_leader(s: NodeServices, leader: NodeConfig | None) -> web.Response:
    if leader is not None and leader.id != s.node_id:
        return problem(
            421,
            NOT_LEADER,
            "Not the leader",
            f"node {s.node_id} is not the leader; send to {leader.id}",
            leader={"id": leader.id, "api": str(leader.api)},
        )
    return problem(
        503,
        NO_LEADER,
        "No leader",
        f"node {s.node_id} knows no leader (election in progress?)",
        headers={"Retry-After": str(NO_LEADER_RETRY_AFTER_S)},
        leader=None,
    )


def _membership_target(config: ClusterConfig, body: Any) -> tuple[str, NodeConfig]:
    """(action, node) of a membership request; HTTPBadRequest when malformed. A node
    missing from this node's config (the operator added it to cluster.toml after this
    node started) comes with its ``raft`` and ``api`` addresses."""
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason='expected {"action": "add"|"remove", "node_id": ID}')
    action, node_id = body.get("action"), body.get("node_id")
    if action not in ACTIONS:
        raise web.HTTPBadRequest(reason=f"action={action!r}: expected one of {list(ACTIONS)}")
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= MAX_ID_LEN:
        raise web.HTTPBadRequest(reason=f"node_id: expected 1..{MAX_ID_LEN} characters")
    known = next((n for n in config.nodes if n.id == node_id), None)
    try:
        raft = parse_hostport(body["raft"], "raft") if "raft" in body else None
        api = parse_hostport(body["api"], "api") if "api" in body else None
    except ConfigError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    if known is not None:
        if (raft is not None and raft != known.raft) or (api is not None and api != known.api):
            raise web.HTTPBadRequest(
                reason=f"node {node_id} has raft={known.raft} api={known.api} in this node's "
                "config, not what the request says"
            )
        return action, known
    if raft is None or api is None:
        raise web.HTTPBadRequest(
            reason=f"node {node_id} is not in this node's config: send its raft and api"
        )
    return action, NodeConfig(node_id, raft, api)


async def post_membership(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"not JSON: {exc}") from None
    action, node = _membership_target(s.config, body)
    st = s.raft.status()
    me = s.config.node(s.node_id)
    outcome = await s.membership.change(action, node, leader=str(me.raft), partners=st.partners)
    if isinstance(outcome, Changed):
        log.info("membership changed", extra={"action": action, "node": node.id})
        return web.json_response(
            {
                "action": action,
                "node": {"id": node.id, "raft": str(node.raft), "api": str(node.api)},
                "members": _members(s),
            }
        )
    if isinstance(outcome, Refused):
        return problem(409, MEMBERSHIP_REFUSED, "Membership change refused", outcome.reason)
    if isinstance(outcome, NotLeader):
        return _not_leader(s, outcome.leader)
    return problem(
        503,
        COMMIT_UNKNOWN,
        "Change unknown",
        f"the change of {node.id} may or may not be committed ({outcome.reason}); "
        "see the members in /v1/status",
    )


# -- status and reads -----------------------------------------------------------------------


def _members(s: NodeServices) -> list[dict[str, Any]]:
    """The Raft members as this node sees them (itself and its partners), by id."""
    me = s.config.node(s.node_id)
    members: list[dict[str, Any]] = [{"id": me.id, "raft": str(me.raft), "api": str(me.api)}]
    members += [{"id": p.id, "raft": p.raft, "api": p.api} for p in s.raft.status().partners]
    return sorted(members, key=lambda m: str(m["id"]))


async def get_status(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    st = s.raft.status()
    # The digest hashes the whole state while the tick thread waits: only on request
    # (tests, chaos checks), never for the console's once-a-second polling of every node.
    want_digest = request.query.get("digest") == "1"
    with s.raft.reading() as ledger:
        ledger_index = ledger.index
        digest = ledger.digest() if want_digest else None
    leader = {"id": st.leader_id, "api": st.leader_api} if st.leader_id is not None else None
    return web.json_response(
        {
            "id": s.node_id,
            "role": st.role,
            "leader": leader,
            "term": st.term,
            "commit_index": st.commit_index,
            "last_applied": st.last_applied,
            "ledger_index": ledger_index,
            "log_size": st.log_size,
            "digest": digest,
            "durability": s.config.durability,
            "has_quorum": st.has_quorum,
            "members": _members(s),
            "partners": [
                {
                    "id": p.id,
                    "raft": p.raft,
                    "api": p.api,
                    "connected": p.connected,
                    "match_index": p.match_index,
                }
                for p in st.partners
            ],
            "feed": {"base": s.feed.base(), "head": s.feed.head(), "waiters": s.feed.waiters()},
            "proposals_in_flight": s.proposals.in_flight(),
            "uptime_s": int(time.monotonic() - s.started_monotonic),
        }
    )


def _record_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not value or len(value) > MAX_ID_LEN:
        raise web.HTTPBadRequest(reason=f"id must be 1..{MAX_ID_LEN} characters")
    return value


def _not_found(what: str, value: str) -> web.Response:
    return problem(404, NOT_FOUND, "Not found", f"no {what} {value!r}")


async def get_products(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    with s.raft.reading() as ledger:
        body = {"index": ledger.index, "products": [encode_view(p) for p in ledger.products()]}
    return web.json_response(body)


async def get_product(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    pid = _record_id(request)
    with s.raft.reading() as ledger:
        view = ledger.product(pid)
        body = None if view is None else {"index": ledger.index, "product": encode_view(view)}
    return web.json_response(body) if body is not None else _not_found("product", pid)


async def get_hold(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    hid = _record_id(request)
    with s.raft.reading() as ledger:
        view = ledger.hold(hid)
        body = None if view is None else {"index": ledger.index, "hold": encode_view(view)}
    return web.json_response(body) if body is not None else _not_found("hold", hid)


async def get_cart(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    cid = _record_id(request)
    with s.raft.reading() as ledger:
        view = ledger.cart(cid)
        body = None
        if view is not None:
            cart = dict(encode_view(view))
            cart["holds"] = [encode_view(h) for h in ledger.holds_of_cart(cid)]
            body = {"index": ledger.index, "cart": cart}
    return web.json_response(body) if body is not None else _not_found("cart", cid)


async def get_order(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    oid = _record_id(request)
    with s.raft.reading() as ledger:
        view = ledger.order(oid)
        body = None if view is None else {"index": ledger.index, "order": encode_view(view)}
    return web.json_response(body) if body is not None else _not_found("order", oid)


async def get_orders(request: web.Request) -> web.Response:
    """``GET /v1/orders?id=A&id=B...``: several orders read at one index (absent: unknown).

    A gateway paying hundreds of orders a second reads the orders that wait together in
    one request instead of one request each."""
    s = request.app[RUNTIME].require()
    ids = request.query.getall("id", [])
    if not 1 <= len(ids) <= MAX_ORDERS_PER_READ:
        raise web.HTTPBadRequest(reason=f"expected 1..{MAX_ORDERS_PER_READ} id parameters")
    if any(not 0 < len(oid) <= MAX_ID_LEN for oid in ids):
        raise web.HTTPBadRequest(reason=f"an id must be 1..{MAX_ID_LEN} characters")
    with s.raft.reading() as ledger:
        views = [view for oid in dict.fromkeys(ids) if (view := ledger.order(oid)) is not None]
        body = {"index": ledger.index, "orders": [encode_view(v) for v in views]}
    return web.json_response(body)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name}={raw!r}: expected an integer") from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(reason=f"{name}={value}: expected {lo}..{hi}")
    return value


async def get_feed(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    from_index = _int_param(request, "from", 0, 0, 2**62)
    limit = _int_param(request, "limit", DEFAULT_FEED_LIMIT, 1, MAX_FEED_PAGE_EVENTS)
    wait_ms = _int_param(request, "wait_ms", 0, 0, MAX_FEED_WAIT_MS)
    page = s.feed.read(from_index, limit)
    if page is not None and not page.events and page.last_index <= from_index and wait_ms:
        await s.feed.wait_newer(from_index, wait_ms / 1000)
        page = s.feed.read(from_index, limit)
    if page is not None:
        return web.json_response(
            {"events": page.events, "last_index": page.last_index, "snapshot": None}
        )
    # The reader is older than the retained events: the state first, then what follows.
    with s.raft.reading() as ledger:
        snapshot = ledger.snapshot_view()
    snapshot_index = snapshot["index"]
    if not isinstance(snapshot_index, int):
        raise TypeError(f"snapshot_view() index is {snapshot_index!r}")
    after = s.feed.read(snapshot_index, limit) or FeedPage([], snapshot_index)
    return web.json_response(
        {
            "events": after.events,
            "last_index": max(after.last_index, snapshot_index),
            "snapshot": snapshot,
        }
    )


async def get_healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def get_metrics(request: web.Request) -> web.Response:
    s = request.app[RUNTIME].require()
    st = s.raft.status()
    m = s.metrics
    m.set_role(st.role)
    m.term.set(st.term)
    m.commit_index.set(st.commit_index)
    m.last_applied.set(st.last_applied)
    m.log_entries.set(st.log_size)
    m.ledger_index.set(s.feed.head())
    m.feed_events.set(s.feed.event_count())
    admission = request.app[ADMISSION]
    for kind in KINDS:
        m.admission_in_flight.labels(kind=kind).set(admission.in_flight(kind))
    return web.Response(body=m.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- the application ------------------------------------------------------------------------


async def _node_context(app: web.Application) -> AsyncIterator[None]:
    """Start the Raft node and its helpers; stop them after the last request."""
    runtime = app[RUNTIME]
    config, node_id = runtime.config, runtime.node_id
    metrics = NodeMetrics()
    feed = Feed(config.raft.feed_retention_events, encode=encode_event)
    feed.attach(asyncio.get_running_loop())
    raft = RaftNode(config, node_id, feed=feed, metrics=metrics)
    try:
        raft.start()
    except BaseException:
        raft.stop()
        raise
    proposals = Proposals(raft, commit_timeout_ms=config.raft.commit_timeout_ms, metrics=metrics)
    membership = Membership(raft, timeout_ms=config.raft.commit_timeout_ms)
    runtime.services = NodeServices(config, node_id, raft, feed, proposals, metrics, membership)
    ticker = ExpiryTicker(raft, proposals, node_id=node_id, period_ms=config.raft.expire_period_ms)
    sync = SettingsSync(raft, proposals, desired_settings(config), node_id=node_id)
    tasks = [
        asyncio.create_task(ticker.run(), name="expiry-ticker"),
        asyncio.create_task(sync.run(), name="settings-sync"),
    ]
    log.info("node started", extra={"node": node_id, "durability": config.durability})
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        feed.close()
        runtime.services = None
        await asyncio.to_thread(raft.stop)
        log.info("node stopped", extra={"node": node_id})


async def _release_waiters(app: web.Application) -> None:
    services = app[RUNTIME].services
    if services is not None:
        services.feed.close()  # long-polls return now, so shutdown does not wait for them


def make_app(config: ClusterConfig, node_id: str) -> web.Application:
    """The node's application: routes, middlewares and the Raft node's lifecycle."""
    config.node(node_id)  # ConfigError early when the id is unknown
    app = web.Application(
        # Authentication first: an unauthenticated flood must not take admission slots.
        middlewares=[problem_middleware, auth_middleware, admission_middleware],
        client_max_size=MAX_REQUEST_BODY_BYTES,
    )
    app[RUNTIME] = NodeRuntime(config, node_id)
    app[ADMISSION] = Admission(AdmissionLimits.from_config(config.raft))
    app.cleanup_ctx.append(_node_context)
    app.on_shutdown.append(_release_waiters)
    app.router.add_post("/v1/commands", post_commands)
    app.router.add_post("/v1/membership", post_membership)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/products", get_products)
    app.router.add_get("/v1/products/{id}", get_product)
    app.router.add_get("/v1/holds/{id}", get_hold)
    app.router.add_get("/v1/carts/{id}", get_cart)
    app.router.add_get("/v1/orders", get_orders)
    app.router.add_get("/v1/orders/{id}", get_order)
    app.router.add_get("/v1/feed", get_feed)
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/metrics", get_metrics)
    return app
