"""The cluster page, the live snapshot API and the live stream (Server-Sent Events).

The page is drawn from the hub's latest snapshot, so it is useful even without
JavaScript; console.js then keeps it current from ``/api/live``, which pushes one
``snapshot`` event a second (the first one carries the chart history too) and ends with a
``session-ended`` event when the operator's session is over.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin.app_keys import CONFIG, HUB, STORE, session_of
from admin.formatting import duration_s, time_ms
from admin.layout import message, page
from admin.membership import AUDIT_ACTIONS, change_audited, forbidden, may_change, membership_forms
from admin.render import Markup, join, render, tag
from admin.security import UNAVAILABLE, problem, see_other
from admin.sessions import set_flash
from admin.sse import stream


def _cell(key: str, value: object) -> Markup:
    return tag("td", "" if value is None else str(value), data_k=key)


def node_row(node: dict[str, Any]) -> Markup:
    up = bool(node.get("up"))
    return tag(
        "tr",
        [
            _cell("id", node.get("id")),
            _cell("api", node.get("api")),
            tag(
                "td",
                str(node.get("health") or ("up" if up else "down")),
                data_k="health",
                class_="up" if up else "down",
            ),
            _cell("role", node.get("role")),
            _cell("term", node.get("term")),
            _cell("commit_index", node.get("commit_index")),
            _cell("lag", node.get("lag")),
            _cell("log_size", node.get("log_size")),
            _cell("uptime", duration_s(node.get("uptime_s"))),
        ],
        data_node=str(node.get("id")),
        data_up="true" if up else "false",
        data_role=str(node.get("role")),
    )


def gateway_row(gateway: dict[str, Any]) -> Markup:
    up = bool(gateway.get("up"))
    total, rate = gateway.get("requests_total"), gateway.get("rate_per_s")
    return tag(
        "tr",
        [
            _cell("id", gateway.get("id")),
            _cell("listen", gateway.get("listen")),
            tag("td", "up" if up else "down", data_k="health", class_="up" if up else "down"),
            _cell("requests_total", "" if total is None else f"{total:.0f}"),
            _cell("rate_per_s", "" if rate is None else f"{rate:.1f}"),
        ],
        data_gateway=str(gateway.get("id")),
        data_up="true" if up else "false",
    )


async def cluster_page(request: web.Request) -> web.StreamResponse:
    return _cluster_page(request)


def _cluster_page(
    request: web.Request, *, notice: Markup | None = None, status: int = 200
) -> web.Response:
    snapshot = request.app[HUB].latest or {}
    nodes = snapshot.get("nodes", [])
    members = snapshot.get("members")
    gateways = snapshot.get("gateways", [])
    content = render(
        "cluster.html",
        {
            "leader": snapshot.get("leader") or "none",
            "updated": time_ms(snapshot.get("at_ms"), "not yet"),
            "node_rows": join(node_row(n) for n in nodes),
            "gateway_rows": join(gateway_row(g) for g in gateways)
            or Markup('<tr class="empty"><td colspan="5">no gateways configured</td></tr>'),
            "membership": membership_forms(
                request, request.app[CONFIG], members if isinstance(members, list) else None
            ),
        },
    )
    return page(
        request, title="Cluster", page_id="cluster", content=content, notice=notice, status=status
    )


async def change_members(request: web.Request) -> web.StreamResponse:
    """POST /cluster/members: add or remove a Raft member (operators; audited)."""
    data = await request.post()
    action, node_id = str(data.get("action", "")), str(data.get("node_id", ""))
    if not may_change(request):
        raise forbidden(request, action, node_id)
    node = next((n for n in request.app[CONFIG].nodes if n.id == node_id), None)
    if action not in AUDIT_ACTIONS or node is None:
        text = f"Not changed: action {action!r} on node {node_id!r} (a node of cluster.toml)"
        return _cluster_page(request, notice=message(text, "error"), status=422)
    change = await change_audited(request, action, node)
    if change.status != "changed":
        return _cluster_page(
            request, notice=message(change.message, "error"), status=change.http_status
        )
    set_flash(request.app[STORE], session_of(request), change.message)
    return see_other("/cluster")


async def cluster_api(request: web.Request) -> web.StreamResponse:
    """GET /api/cluster: the latest snapshot as JSON."""
    snapshot = request.app[HUB].latest
    if snapshot is None:
        return problem(503, UNAVAILABLE, "No snapshot yet", "the console is still starting")
    return web.json_response(snapshot)


async def live_stream(request: web.Request) -> web.StreamResponse:
    """GET /api/live: Server-Sent Events, one snapshot a second (the first one carries the
    chart history too)."""
    hub = request.app[HUB]
    return await stream(request, hub, lambda: {"history": list(hub.history)})
