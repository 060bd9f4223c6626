"""What each committed event means to the notifier (pure).

Theory of operation: ``effects_of(event)`` turns one feed event into the notifier's
effects, applied by the outbox in the same transaction as the feed position:

- ``product_created``/``product_updated``: remember the product's name (for the texts).
- ``order_placed``: remember the order (its sealed contact details, amount, lines) and
  notify its shopper; ``order_completed``, ``order_failed`` and ``order_expired`` notify
  the shopper of the remembered order, then forget it.
- ``hold_placed`` and ``reserve_refused`` (for any reason but ``sold_out``: a shopper
  refused because it is sold out was just told so): the shopper has shown interest in
  the product. ``sold_out`` notifies everyone interested or subscribed, then clears the
  interest (they have been told); ``back_in_stock`` notifies the subscribers.

Order notices go to the order queue, stock notices (possibly thousands at once) to the
bulk queue, which is sent at a lower priority. Events the notifier has no use for
(payment declined, holds ending, restocks, settings) produce no effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class Notice(StrEnum):
    ORDER_PLACED = "order_placed"
    ORDER_COMPLETED = "order_completed"
    ORDER_FAILED = "order_failed"
    ORDER_EXPIRED = "order_expired"
    SOLD_OUT = "sold_out"
    BACK_IN_STOCK = "back_in_stock"


class Queue(IntEnum):
    ORDER = 0  # sent first, never behind bulk notices
    BULK = 1


ORDER_NOTICES = frozenset(
    {Notice.ORDER_PLACED, Notice.ORDER_COMPLETED, Notice.ORDER_FAILED, Notice.ORDER_EXPIRED}
)
STOCK_NOTICES = frozenset({Notice.SOLD_OUT, Notice.BACK_IN_STOCK})


def queue_of(notice: Notice) -> Queue:
    return Queue.ORDER if notice in ORDER_NOTICES else Queue.BULK


@dataclass(frozen=True, slots=True)
class RememberProduct:
    product_id: str
    name: str


@dataclass(frozen=True, slots=True)
class RememberOrder:
    order_id: str
    user_id: str
    sealed_details: str
    amount_minor: int
    currency: str
    pay_by_ms: int
    lines: tuple[tuple[str, int, int], ...]  # (product_id, quantity, unit_price_minor)


@dataclass(frozen=True, slots=True)
class NoteInterest:
    product_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class NotifyOrder:
    notice: Notice
    order_id: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. why it failed


@dataclass(frozen=True, slots=True)
class ForgetOrder:
    order_id: str


@dataclass(frozen=True, slots=True)
class NotifyStock:
    notice: Notice
    product_id: str


@dataclass(frozen=True, slots=True)
class ClearInterest:
    product_id: str


Effect = (
    RememberProduct
    | RememberOrder
    | NoteInterest
    | NotifyOrder
    | ForgetOrder
    | NotifyStock
    | ClearInterest
)

_ORDER_END = {
    "order_completed": Notice.ORDER_COMPLETED,
    "order_failed": Notice.ORDER_FAILED,
    "order_expired": Notice.ORDER_EXPIRED,
}


def _str(event: Mapping[str, Any], key: str) -> str:
    value = event.get(key)
    return value if isinstance(value, str) else ""


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _lines(value: object) -> tuple[tuple[str, int, int], ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for line in value:
        if isinstance(line, dict) and isinstance(line.get("product_id"), str):
            out.append((line["product_id"], _int(line, "quantity"), _int(line, "unit_price_minor")))
    return tuple(out)


def effects_of(event: Mapping[str, Any]) -> tuple[Effect, ...]:
    """The notifier's effects of one feed event (a wire dict of ``ledger.events.Event``)."""
    kind = _str(event, "kind")
    raw = event.get("data")
    data: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    user_id, product_id, order_id = (
        _str(event, "user_id"),
        _str(event, "product_id"),
        _str(event, "order_id"),
    )
    if kind in ("product_created", "product_updated"):
        name = data.get("name")
        return (RememberProduct(product_id, name if isinstance(name, str) else product_id),)
    if kind == "order_placed" and order_id and user_id:
        sealed = data.get("sealed_details")
        return (
            RememberOrder(
                order_id=order_id,
                user_id=user_id,
                sealed_details=sealed if isinstance(sealed, str) else "",
                amount_minor=_int(data, "amount_minor"),
                currency=str(data.get("currency") or ""),
                pay_by_ms=_int(data, "pay_by_ms"),
                lines=_lines(data.get("lines")),
            ),
            NotifyOrder(Notice.ORDER_PLACED, order_id),
        )
    if kind in _ORDER_END and order_id:
        failure = data.get("failure")
        extra = {"failure": failure} if isinstance(failure, str) and failure else {}
        return (NotifyOrder(_ORDER_END[kind], order_id, extra), ForgetOrder(order_id))
    if kind == "hold_placed" and user_id and product_id:
        return (NoteInterest(product_id, user_id),)
    if kind == "reserve_refused" and user_id and product_id:
        if data.get("reason") == "sold_out":
            return ()
        return (NoteInterest(product_id, user_id),)
    if kind == "sold_out" and product_id:
        return (NotifyStock(Notice.SOLD_OUT, product_id), ClearInterest(product_id))
    if kind == "back_in_stock" and product_id:
        return (NotifyStock(Notice.BACK_IN_STOCK, product_id),)
    return ()
