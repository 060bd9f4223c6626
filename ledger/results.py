"""Results: one per command, typed. A refusal is a ``Rejected`` value, never an exception."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.commands import PaymentOutcome
from ledger.reasons import Reason
from ledger.views import OrderLine, OrderStatus, PaymentStatus, ProductView


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    reason: Reason
    message: str
    available: int | None = None  # for sold_out: units that were available


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductSaved:
    product: ProductView


@dataclass(frozen=True, slots=True, kw_only=True)
class Restocked:
    product_id: str
    total_stock: int
    available: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldPlaced:
    hold_id: str
    cart_id: str
    user_id: str
    product_id: str
    quantity: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldReleased:
    hold_id: str
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced:
    order_id: str
    cart_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    amount_minor: int
    currency: str
    pay_by_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentRecorded:
    order_id: str
    outcome: PaymentOutcome
    status: OrderStatus
    payment_status: PaymentStatus
    amount_minor: int
    transaction_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Expired:
    hold_ids: tuple[str, ...]
    order_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Configured:
    payment_ttl_ms: int
    retention_ms: int
    max_idempotency_keys: int


Result = (
    Rejected
    | ProductSaved
    | Restocked
    | HoldPlaced
    | HoldReleased
    | OrderPlaced
    | PaymentRecorded
    | Expired
    | Configured
)

# The wire name of each result type ("type" field of its dict form).
RESULT_TYPES: dict[str, type[Result]] = {
    "rejected": Rejected,
    "product_saved": ProductSaved,
    "restocked": Restocked,
    "hold_placed": HoldPlaced,
    "hold_released": HoldReleased,
    "order_placed": OrderPlaced,
    "payment_recorded": PaymentRecorded,
    "expired": Expired,
    "configured": Configured,
}
