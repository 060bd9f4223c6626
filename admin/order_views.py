"""Orders and payments: look an order up by id, or a shopper's orders by shopper id.

Orders are read from the leader (``/v1/orders/{id}``). A shopper's order ids come from the
console's feed follower (the node API finds orders by id only). Personal details stay
sealed on every page; an operator with the ``pii`` right may unseal one order's details
with an explicit, CSRF-protected, audited request, and sees them on that response only.
Every search is audited too: looking at orders is looking at shoppers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from admin import audit
from admin.app_keys import CLOCK_MS, CLUSTER, CONFIG, FEED, STORE, session_of
from admin.formatting import time_ms
from admin.layout import csrf_field, message, page
from admin.limits import MAX_ORDERS_PER_SHOPPER_SHOWN
from admin.money import MoneyError, from_minor
from admin.operators import RIGHT_PII
from admin.pii import UnsealError, unseal
from admin.render import Markup, join, render, tag
from cluster.errors import ClusterError, NotFound
from ledger.limits import MAX_ID_LEN

Order = dict[str, Any]


def _amount(order: Mapping[str, Any]) -> str:
    amount, currency = order.get("amount_minor"), str(order.get("currency", ""))
    if not isinstance(amount, int):
        return ""
    try:
        return f"{from_minor(amount, currency)} {currency}"
    except MoneyError:
        return f"{amount} (minor units) {currency}"


def _lines(order: Mapping[str, Any]) -> str:
    lines = order.get("lines")
    if not isinstance(lines, list):
        return ""
    return ", ".join(
        f"{line.get('quantity')} of {line.get('product_id')}"
        for line in lines
        if isinstance(line, dict)
    )


def _personal(
    request: web.Request, order: Mapping[str, Any], unsealed: Mapping[str, Any] | None
) -> Markup:
    oid = str(order.get("order_id", ""))
    if unsealed is not None:
        details = unsealed.get("details", {})
        items = details.items() if isinstance(details, dict) else []
        return tag(
            "dl",
            [Markup(tag("dt", str(k)) + tag("dd", str(v))) for k, v in sorted(items)],
            class_="unsealed",
            id=f"pii-{oid}",
        )
    if not order.get("sealed_details"):
        return Markup("none")
    if not session_of(request).operator.may(RIGHT_PII):
        return Markup("sealed")
    return tag(
        "form",
        [csrf_field(request), tag("button", "Unseal", type="submit", class_="danger")],
        method="post",
        action=f"/orders/{oid}/unseal",
        class_="inline unseal",
    )


def order_row(
    request: web.Request, order: Mapping[str, Any], unsealed: Mapping[str, Any] | None = None
) -> Markup:
    status = str(order.get("status", ""))
    return tag(
        "tr",
        [
            tag("td", str(order.get("order_id", "")), data_k="order_id"),
            tag("td", str(order.get("user_id", "")), data_k="user_id"),
            tag("td", status, data_k="status", class_=f"order-{status}"),
            tag("td", str(order.get("payment_status", "")), data_k="payment_status"),
            tag("td", _amount(order), data_k="amount"),
            tag("td", str(order.get("payment_method", "")), data_k="payment_method"),
            tag("td", str(order.get("provider", "")), data_k="provider"),
            tag("td", str(order.get("transaction_id", "")), data_k="transaction_id"),
            tag("td", str(order.get("payment_attempts", "")), data_k="payment_attempts"),
            tag("td", _lines(order), data_k="lines"),
            tag("td", time_ms(order.get("created_at_ms")), data_k="created"),
            tag("td", time_ms(order.get("pay_by_ms")), data_k="pay_by"),
            tag("td", str(order.get("failure", "")), data_k="failure"),
            tag("td", _personal(request, order, unsealed), data_k="personal"),
        ],
        data_order=str(order.get("order_id", "")),
    )


def _orders_table(
    request: web.Request, orders: list[Order], unsealed: Mapping[str, Any] | None = None
) -> Markup:
    head = tag(
        "tr",
        [
            tag("th", h)
            for h in (
                "Order",
                "Shopper",
                "Status",
                "Payment",
                "Amount",
                "Method",
                "Provider",
                "Transaction",
                "Attempts",
                "Lines",
                "Created (UTC)",
                "Pay by (UTC)",
                "Failure",
                "Personal data",
            )
        ],
    )
    rows = join(order_row(request, o, unsealed) for o in orders)
    return tag("table", [tag("thead", head), tag("tbody", rows)], id="orders", class_="grid")


async def _order(request: web.Request, order_id: str) -> Order | None:
    try:
        answer = await request.app[CLUSTER].get(f"/v1/orders/{order_id}")
    except NotFound:
        return None
    order = answer.get("order")
    return order if isinstance(order, dict) else None


def _valid_query(q: str) -> bool:
    return 0 < len(q) <= MAX_ID_LEN and all(c.isalnum() or c in "._-:@" for c in q)


async def find_orders(request: web.Request, q: str) -> tuple[list[Order], str]:
    """Orders for ``q``: the order with that id, else the shopper's orders; and a note."""
    order = await _order(request, q)
    if order is not None:
        return [order], ""
    order_ids = request.app[FEED].shoppers.orders_of(q)
    if not order_ids:
        return [], f"No order with id {q!r} and no orders seen for a shopper {q!r}."
    found = []
    for oid in order_ids[:MAX_ORDERS_PER_SHOPPER_SHOWN]:
        o = await _order(request, oid)
        if o is not None:
            found.append(o)
    more = len(order_ids) - MAX_ORDERS_PER_SHOPPER_SHOWN
    note = f"Showing the newest {MAX_ORDERS_PER_SHOPPER_SHOWN}; {more} older." if more > 0 else ""
    return found, note


def _audit(request: web.Request, action: str, target: str, details: dict[str, Any]) -> None:
    audit.record(
        request.app[STORE],
        at_ms=request.app[CLOCK_MS](),
        operator=session_of(request).operator.username,
        action=action,
        target=target,
        details=details,
        ip=request.remote or "",
    )


def _page(request: web.Request, q: str, results: Markup, status: int = 200) -> web.Response:
    content = render("orders.html", {"q": q, "results": results})
    return page(request, title="Orders", page_id="orders", content=content, status=status)


async def orders_page(request: web.Request) -> web.StreamResponse:
    q = request.query.get("q", "").strip()
    if not q:
        return _page(request, "", Markup(""))
    if not _valid_query(q):
        return _page(request, q, message("Not a valid order or shopper id.", "error"), 422)
    try:
        orders, note = await find_orders(request, q)
    except ClusterError as exc:
        return _page(request, q, message(f"The cluster did not answer: {exc}", "error"), 503)
    _audit(request, "order.search", q, {"found": [o.get("order_id") for o in orders]})
    results = join([message(note, "info" if orders else "error"), _orders_table(request, orders)])
    return _page(request, q, results if orders else message(note, "error"))


async def unseal_order(request: web.Request) -> web.StreamResponse:
    order_id = request.match_info["order_id"]
    if not _valid_query(order_id):
        raise web.HTTPNotFound(text="No such order.")
    if not session_of(request).operator.may(RIGHT_PII):
        _audit(request, "denied", order_id, {"wanted": "pii.unseal", "right": RIGHT_PII})
        raise web.HTTPForbidden(text="Your account lacks the right 'pii' to unseal personal data.")
    try:
        order = await _order(request, order_id)
    except ClusterError as exc:
        return _page(request, order_id, message(f"The cluster did not answer: {exc}", "error"), 503)
    if order is None:
        raise web.HTTPNotFound(text=f"No order {order_id!r}.")
    try:
        opened = await asyncio.to_thread(
            unseal, request.app[CONFIG], str(order.get("sealed_details", ""))
        )
    except UnsealError as exc:
        _audit(request, "pii.unseal", order_id, {"user_id": order.get("user_id"), "ok": False})
        return _page(
            request,
            order_id,
            join([message(str(exc), "error"), _orders_table(request, [order])]),
            422,
        )
    _audit(request, "pii.unseal", order_id, {"user_id": order.get("user_id"), "ok": True})
    return _page(request, order_id, _orders_table(request, [order], opened))
