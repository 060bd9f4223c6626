"""Committed events: what consumers (edge caches, snapshot writer, notifier, console,
chaos checker) read from a node's feed, ordered by ``(index, seq)``.

``index`` is the ledger's entry index: the number of Raft entries (command batches) the
ledger has applied, the same on every node. ``seq`` orders events inside one entry.
Every event that moves stock carries its double-entry ``moves`` and the ``stock`` levels
of each touched product after the event, so a cache can simply keep the latest.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

JSONValue = None | bool | int | str | list["JSONValue"] | dict[str, "JSONValue"]


class Bucket(StrEnum):
    OUTSIDE = "outside"  # units not (or no longer) part of the sale's stock
    AVAILABLE = "available"
    RESERVED = "reserved"
    SOLD = "sold"


class EventKind(StrEnum):
    PRODUCT_CREATED = "product_created"
    PRODUCT_UPDATED = "product_updated"
    RESTOCKED = "restocked"
    HOLD_PLACED = "hold_placed"
    HOLD_RELEASED = "hold_released"
    HOLD_EXPIRED = "hold_expired"
    RESERVE_REFUSED = "reserve_refused"  # a reserve refused (sold_out, limit_reached, ...)
    ORDER_PLACED = "order_placed"
    PAYMENT_DECLINED = "payment_declined"  # one attempt declined; order still pending
    ORDER_COMPLETED = "order_completed"  # paid: reserved -> sold
    ORDER_FAILED = "order_failed"  # payment failed for good: reserved -> available
    ORDER_EXPIRED = "order_expired"  # not paid by its deadline: reserved -> available
    SOLD_OUT = "sold_out"  # a product's available count reached 0
    BACK_IN_STOCK = "back_in_stock"  # available went from 0 to more than 0
    SETTINGS_CHANGED = "settings_changed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    """One double-entry stock move: ``quantity`` units of a product from one bucket to
    another. Summing the moves of the feed reproduces every product's balances."""

    product_id: str
    from_bucket: Bucket
    to_bucket: Bucket
    quantity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StockLevel:
    product_id: str
    total_stock: int
    available: int
    reserved: int
    sold: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    index: int
    seq: int
    at_ms: int
    kind: EventKind
    key: str  # idempotency key of the command behind it ("" for lazy expiry)
    user_id: str = ""
    product_id: str = ""
    hold_id: str = ""
    cart_id: str = ""
    order_id: str = ""
    moves: tuple[Move, ...] = ()
    stock: tuple[StockLevel, ...] = ()
    data: dict[str, JSONValue] | None = None  # kind-specific details (amount, reason, ...)
