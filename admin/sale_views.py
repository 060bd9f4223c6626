"""The sale pages: products with live stock and a chart, and the forms that change them.

Reads come from the leader (read-your-writes: a product just created is on the page the
redirect lands on). Writes go through ``admin.writes.submit_audited``. A form that fails
is drawn again with what the operator typed and the reason; it keeps its idempotency key
while the outcome is open (unknown, or never sent) and gets a new one once the ledger
has answered, so a corrected form is a new request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from admin import audit
from admin.app_keys import CLOCK_MS, CLUSTER, HUB, STORE, session_of
from admin.formatting import duration_s, input_time_ms, sale_state, window
from admin.layout import message, page
from admin.limits import STATUS_TIMEOUT_MS
from admin.live import product_json
from admin.money import from_minor
from admin.operators import RIGHT_OPERATOR
from admin.product_forms import (
    FormError,
    close_command,
    create_command,
    new_key,
    open_command,
    product_id,
    restock_command,
    update_command,
)
from admin.render import Markup, join, render, tag
from admin.security import see_other
from admin.sessions import set_flash
from admin.writes import Outcome, submit_audited
from cluster.errors import ClusterError, NotFound
from ledger.limits import DEFAULT_HOLD_TTL_MS

Form = Mapping[str, str]
Builder = Callable[[Form, str], dict[str, Any]]


def _cell(key: str, value: object) -> Markup:
    return tag("td", "" if value is None else str(value), data_k=key)


def product_row(product: Mapping[str, Any], now_ms: int) -> Markup:
    pid = str(product.get("product_id", ""))
    state = sale_state(dict(product), now_ms)
    limit = product.get("per_user_limit")
    ttl = product.get("hold_ttl_ms")
    return tag(
        "tr",
        [
            tag("td", tag("a", pid, href=f"/sale/products/{pid}"), data_k="product_id"),
            _cell("name", product.get("name")),
            _cell("price", f"{product.get('price', '')} {product.get('currency', '')}"),
            tag("td", state, data_k="state", class_=f"state-{state}"),
            _cell("window", window(dict(product))),
            _cell("per_user_limit", "none" if limit is None else limit),
            _cell("hold_ttl", duration_s(ttl / 1000) if isinstance(ttl, int) else ""),
            _cell("total_stock", product.get("total_stock")),
            _cell("available", product.get("available")),
            _cell("reserved", product.get("reserved")),
            _cell("sold", product.get("sold")),
        ],
        data_product=pid,
    )


async def _products(request: web.Request) -> tuple[list[dict[str, Any]], str]:
    """Products from the leader, or the last live snapshot's when no node answers."""
    try:
        answer = await request.app[CLUSTER].get(
            "/v1/products", timeout_s=STATUS_TIMEOUT_MS / 1000 * 2
        )
    except ClusterError as exc:
        latest = request.app[HUB].latest
        products = list(latest["products"]) if latest else []
        return products, f"The cluster did not answer ({exc}); showing the last known stock."
    raw = answer.get("products")
    rows = [product_json(p) for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
    rows.sort(key=lambda p: str(p.get("product_id", "")))
    return rows, ""


def _may_change(request: web.Request) -> bool:
    return session_of(request).operator.may(RIGHT_OPERATOR)


def _create_form(request: web.Request, form: Form | None, key: str) -> Markup:
    if not _may_change(request):
        return message("Your account may look but not change the sale (right: operator).")
    values = form or {}
    return render(
        "create_form.html",
        {
            "csrf": session_of(request).csrf_token,
            "key": key,
            "product_id": values.get("product_id", ""),
            "name": values.get("name", ""),
            "price": values.get("price", ""),
            "currency": values.get("currency", "USD"),
            "total_stock": values.get("total_stock", ""),
            "opens_at": values.get("opens_at", ""),
            "closes_at": values.get("closes_at", ""),
            "per_user_limit": values.get("per_user_limit", ""),
            "hold_ttl_s": values.get("hold_ttl_s", str(DEFAULT_HOLD_TTL_MS // 1000)),
        },
    )


async def _sale_page(
    request: web.Request,
    *,
    form: Form | None = None,
    key: str | None = None,
    notice: Markup | None = None,
    status: int = 200,
) -> web.Response:
    products, note = await _products(request)
    now_ms = request.app[CLOCK_MS]()
    chart_pid = str(products[0]["product_id"]) if products else ""
    content = render(
        "sale.html",
        {
            "product_rows": join(product_row(p, now_ms) for p in products)
            or Markup('<tr class="empty"><td colspan="11">no products yet</td></tr>'),
            "products_note": message(note, "error"),
            "chart_options": join(
                tag("option", str(p["product_id"]), value=str(p["product_id"])) for p in products
            ),
            "chart_product": chart_pid,
            "create_form": _create_form(request, form, key or new_key()),
        },
    )
    return page(
        request, title="Sale", page_id="sale", content=content, status=status, notice=notice
    )


async def sale_page(request: web.Request) -> web.StreamResponse:
    return await _sale_page(request)


async def _form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _forbidden(request: web.Request, action: str, target: str) -> web.HTTPForbidden:
    session = session_of(request)
    audit.record(
        request.app[STORE],
        at_ms=request.app[CLOCK_MS](),
        operator=session.operator.username,
        action="denied",
        target=target,
        details={"wanted": action, "right": RIGHT_OPERATOR},
        ip=request.remote or "",
    )
    return web.HTTPForbidden(text="Your account lacks the right 'operator' to change the sale.")


def _status_of(outcome: Outcome) -> int:
    return {"rejected": 409, "unknown": 503, "unavailable": 503}.get(outcome.status, 200)


async def create_product(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    if not _may_change(request):
        raise _forbidden(request, "product.create", form.get("product_id", ""))
    try:
        command = create_command(form)
    except FormError as exc:
        return await _sale_page(
            request,
            form=form,
            key=form.get("key") or None,
            notice=message(f"Not created: {exc}", "error"),
            status=422,
        )
    pid = str(command["product_id"])
    outcome = await submit_audited(request, "product.create", pid, command)
    if not outcome.applied:
        return await _sale_page(
            request,
            form=form,
            key=str(command["key"]) if outcome.keep_key else new_key(),
            notice=message(f"Not created: {outcome.message}", "error"),
            status=_status_of(outcome),
        )
    set_flash(request.app[STORE], session_of(request), f"Created product {pid}.")
    return see_other(f"/sale/products/{pid}")


async def _product(request: web.Request, pid: str) -> dict[str, Any]:
    try:
        answer = await request.app[CLUSTER].get(f"/v1/products/{pid}")
    except NotFound:
        raise web.HTTPNotFound(text=f"No product {pid!r}.") from None
    except ClusterError as exc:
        raise web.HTTPServiceUnavailable(text=f"The cluster did not answer: {exc}") from None
    product = answer.get("product")
    if not isinstance(product, dict):
        raise web.HTTPBadGateway(text="The node answered without the product.")
    return product_json(product)


def _product_forms(
    request: web.Request, product: Mapping[str, Any], form: Form | None, keys: Mapping[str, str]
) -> Markup:
    if not _may_change(request):
        return message("Your account may look but not change the sale (right: operator).")
    currency = str(product.get("currency", "USD"))
    limit = product.get("per_user_limit")
    ttl = product.get("hold_ttl_ms")
    opens, closes = product.get("opens_at_ms"), product.get("closes_at_ms")
    price = product.get("price_minor")
    defaults = {
        "name": str(product.get("name", "")),
        "price": from_minor(price, currency) if isinstance(price, int) else "",
        "opens_at": input_time_ms(opens if isinstance(opens, int) else None),
        "closes_at": input_time_ms(closes if isinstance(closes, int) else None),
        "per_user_limit": "" if limit is None else str(limit),
        "hold_ttl_s": str(ttl // 1000) if isinstance(ttl, int) else "",
    }
    values = {k: (form or {}).get(k, v) for k, v in defaults.items()}
    return render(
        "product_forms.html",
        {
            "csrf": session_of(request).csrf_token,
            "product_id": str(product.get("product_id", "")),
            "currency": currency,
            "edit_key": keys.get("edit") or new_key(),
            "restock_key": keys.get("restock") or new_key(),
            "open_key": keys.get("open") or new_key(),
            "close_key": keys.get("close") or new_key(),
            **values,
        },
    )


async def _product_page(
    request: web.Request,
    pid: str,
    *,
    form: Form | None = None,
    keys: Mapping[str, str] | None = None,
    notice: Markup | None = None,
    status: int = 200,
) -> web.Response:
    product = await _product(request, pid)
    content = render(
        "product.html",
        {
            "product_id": pid,
            "product_row": product_row(product, request.app[CLOCK_MS]()),
            "forms": _product_forms(request, product, form, keys or {}),
        },
    )
    return page(
        request,
        title=f"Product {pid}",
        page_id="sale",
        content=content,
        status=status,
        notice=notice,
    )


def _pid(request: web.Request) -> str:
    try:
        return product_id(request.match_info["product_id"])
    except FormError:
        raise web.HTTPNotFound(text="No such product.") from None


async def product_page(request: web.Request) -> web.StreamResponse:
    return await _product_page(request, _pid(request))


async def _change(
    request: web.Request, which: str, action: str, build: Builder, done: str
) -> web.StreamResponse:
    """The shared path of the product forms: check right, build, submit, answer."""
    pid = _pid(request)
    form = await _form(request)
    if not _may_change(request):
        raise _forbidden(request, action, pid)
    try:
        command = build(form, pid)
    except FormError as exc:
        return await _product_page(
            request,
            pid,
            form=form,
            keys={which: form.get("key", "")},
            notice=message(f"Not saved: {exc}", "error"),
            status=422,
        )
    outcome = await submit_audited(request, action, pid, command)
    if not outcome.applied:
        return await _product_page(
            request,
            pid,
            form=form,
            keys={which: str(command["key"])} if outcome.keep_key else {},
            notice=message(f"Not saved: {outcome.message}", "error"),
            status=_status_of(outcome),
        )
    set_flash(request.app[STORE], session_of(request), done)
    return see_other(f"/sale/products/{pid}")


async def edit_product(request: web.Request) -> web.StreamResponse:
    pid = _pid(request)
    product = await _product(request, pid)
    currency = str(product.get("currency", "USD"))
    return await _change(
        request,
        "edit",
        "product.update",
        lambda form, p: update_command(form, p, currency),
        f"Saved product {pid}.",
    )


async def restock(request: web.Request) -> web.StreamResponse:
    return await _change(
        request,
        "restock",
        "product.restock",
        restock_command,
        f"Restocked product {request.match_info['product_id']}.",
    )


async def open_sale(request: web.Request) -> web.StreamResponse:
    return await _change(
        request,
        "open",
        "sale.open",
        open_command,
        f"Opened the sale of {request.match_info['product_id']}.",
    )


async def close_sale(request: web.Request) -> web.StreamResponse:
    now_ms = request.app[CLOCK_MS]()
    return await _change(
        request,
        "close",
        "sale.close",
        lambda form, pid: close_command(form, pid, now_ms),
        f"Closed the sale of {request.match_info['product_id']}.",
    )
