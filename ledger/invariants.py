"""The ledger's invariants, as functions returning what is wrong (empty: all is well).

Two depths. ``product_problems`` is O(1) and runs after every batch on the products the
batch touched: conservation (``available + reserved + sold == total_stock``, none
negative) and that ``reserved`` is exactly the units of active holds plus pending orders
as the product's own counters say. ``state_problems`` recomputes every counter from the
records themselves (O(state)); ``Ledger.check_invariants`` and snapshot loading run it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ledger.deadlines import HOLD, ORDER, Deadlines
from ledger.idempotency import IdempotencyMemory
from ledger.limits import MAX_HOLDS_PER_CART
from ledger.records import CartRecord, HoldRecord, OrderRecord, ProductRecord
from ledger.settings import Settings
from ledger.views import CartStatus, HoldStatus, OrderStatus

UserProduct = tuple[str, str]


def product_problems(p: ProductRecord) -> list[str]:
    """Conservation and the reserved split of one product."""
    problems: list[str] = []
    pid = p.product_id
    if p.available + p.reserved + p.sold != p.total_stock:
        problems.append(
            f"product {pid}: available {p.available} + reserved {p.reserved} + sold {p.sold}"
            f" != total_stock {p.total_stock}"
        )
    for bucket in ("total_stock", "available", "reserved", "sold", "held_units", "pending_units"):
        if getattr(p, bucket) < 0:
            problems.append(f"product {pid}: {bucket} is negative ({getattr(p, bucket)})")
    if p.reserved != p.held_units + p.pending_units:
        problems.append(
            f"product {pid}: reserved {p.reserved} != units in active holds {p.held_units}"
            f" + units in pending orders {p.pending_units}"
        )
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class StateParts:
    """Everything ``state_problems`` looks at (the ledger's private collections)."""

    now_ms: int
    settings: Settings
    products: Mapping[str, ProductRecord]
    holds: Mapping[str, HoldRecord]
    carts: Mapping[str, CartRecord]
    orders: Mapping[str, OrderRecord]
    open_carts: Mapping[str, str]
    held: Mapping[UserProduct, int]
    bought: Mapping[UserProduct, int]
    deadlines: Deadlines
    memory: IdempotencyMemory


def state_problems(s: StateParts) -> list[str]:
    """Every invariant, recomputed from the records."""
    problems: list[str] = []
    for p in s.products.values():
        problems += product_problems(p)
        if p.updated_at_ms > s.now_ms:
            problems.append(f"product {p.product_id}: updated in the future")
    problems += _hold_problems(s)
    problems += _cart_problems(s)
    problems += _order_problems(s)
    problems += _counter_problems(s)
    problems += _deadline_problems(s)
    if len(s.memory) > s.settings.max_idempotency_keys:
        problems.append(
            f"idempotency memory holds {len(s.memory)} keys,"
            f" more than {s.settings.max_idempotency_keys}"
        )
    problems += s.memory.problems()
    oldest = s.memory.oldest_ms()
    if oldest is not None and oldest <= s.now_ms - s.settings.retention_ms:
        problems.append("idempotency memory keeps a key older than the retention time")
    return problems


def _hold_problems(s: StateParts) -> list[str]:
    problems: list[str] = []
    for hid, h in s.holds.items():
        if h.product_id not in s.products:
            problems.append(f"hold {hid}: unknown product {h.product_id}")
        if h.created_at_ms > s.now_ms or (h.ended_at_ms or 0) > s.now_ms:
            problems.append(f"hold {hid}: created or ended in the future")
        if h.status is HoldStatus.ACTIVE:
            if h.expires_at_ms <= s.now_ms:
                problems.append(f"hold {hid}: active past its expiry")
            cart = s.carts.get(h.cart_id)
            if cart is None or hid not in cart.active:
                problems.append(f"hold {hid}: active but not among its cart's active holds")
    return problems


def _cart_problems(s: StateParts) -> list[str]:
    problems: list[str] = []
    for cid, cart in s.carts.items():
        if len(cart.active) > MAX_HOLDS_PER_CART:
            problems.append(f"cart {cid}: {len(cart.active)} active holds")
        for hid in cart.active:
            h = s.holds.get(hid)
            if h is None or h.status is not HoldStatus.ACTIVE or h.cart_id != cid:
                problems.append(f"cart {cid}: {hid} listed as active but is not")
            if hid not in cart.hold_ids:
                problems.append(f"cart {cid}: active {hid} missing from its holds")
        if cart.status is CartStatus.OPEN:
            if s.open_carts.get(cart.user_id) != cid:
                problems.append(f"cart {cid}: open but not the open cart of {cart.user_id}")
        elif cart.order_id is None or cart.order_id not in s.orders or cart.active:
            problems.append(f"cart {cid}: ordered without a known order, or with active holds")
    for user, cid in s.open_carts.items():
        open_cart = s.carts.get(cid)
        if (
            open_cart is None
            or open_cart.status is not CartStatus.OPEN
            or open_cart.user_id != user
        ):
            problems.append(f"user {user}: open cart {cid} is not an open cart of theirs")
    return problems


def _order_problems(s: StateParts) -> list[str]:
    problems: list[str] = []
    for oid, o in s.orders.items():
        if o.amount_minor != sum(line.quantity * line.unit_price_minor for line in o.lines):
            problems.append(f"order {oid}: amount is not the sum of its lines")
        if o.status is OrderStatus.PENDING and o.pay_by_ms <= s.now_ms:
            problems.append(f"order {oid}: pending past its payment deadline")
        if o.created_at_ms > s.now_ms or (o.ended_at_ms or 0) > s.now_ms:
            problems.append(f"order {oid}: created or ended in the future")
        for line in o.lines:
            h = s.holds.get(line.hold_id)
            if line.product_id not in s.products:
                problems.append(f"order {oid}: unknown product {line.product_id}")
            if h is None or h.status is not HoldStatus.ORDERED:
                problems.append(f"order {oid}: line hold {line.hold_id} is not an ordered hold")
    return problems


def _counter_problems(s: StateParts) -> list[str]:
    problems: list[str] = []
    held: dict[UserProduct, int] = {}
    held_by_product: dict[str, int] = {}
    pending_by_product: dict[str, int] = {}
    for h in s.holds.values():
        if h.status is HoldStatus.ACTIVE:
            pair = (h.user_id, h.product_id)
            held[pair] = held.get(pair, 0) + h.quantity
            held_by_product[h.product_id] = held_by_product.get(h.product_id, 0) + h.quantity
    for o in s.orders.values():
        if o.status is OrderStatus.PENDING:
            for line in o.lines:
                pair = (o.user_id, line.product_id)
                held[pair] = held.get(pair, 0) + line.quantity
                pid = line.product_id
                pending_by_product[pid] = pending_by_product.get(pid, 0) + line.quantity
    if held != dict(s.held):
        wrong = sorted(set(held.items()) ^ set(s.held.items()))[:5]
        problems.append(f"per-user held units differ from the records: {wrong}")
    sold_by_product: dict[str, int] = {}
    for (user, pid), units in s.bought.items():
        if units <= 0:
            problems.append(f"user {user}: bought {units} units of {pid}")
        sold_by_product[pid] = sold_by_product.get(pid, 0) + units
    for pid, p in s.products.items():
        if p.held_units != held_by_product.get(pid, 0):
            problems.append(f"product {pid}: held_units {p.held_units} != active holds")
        if p.pending_units != pending_by_product.get(pid, 0):
            problems.append(f"product {pid}: pending_units {p.pending_units} != pending orders")
        if p.sold != sold_by_product.get(pid, 0):
            problems.append(f"product {pid}: sold {p.sold} != units users bought")
    return problems


def _deadline_problems(s: StateParts) -> list[str]:
    """Every active hold and pending order must be in the heap, or it would never expire."""
    queued = {(kind, rid, at) for at, kind, _, rid in s.deadlines.entries()}
    problems: list[str] = []
    for hid, h in s.holds.items():
        if h.status is HoldStatus.ACTIVE and (HOLD, hid, h.expires_at_ms) not in queued:
            problems.append(f"hold {hid}: its expiry is not scheduled")
    for oid, o in s.orders.items():
        if o.status is OrderStatus.PENDING and (ORDER, oid, o.pay_by_ms) not in queued:
            problems.append(f"order {oid}: its payment deadline is not scheduled")
    return problems
