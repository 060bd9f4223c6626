"""Read-only views of ledger records, returned by queries and inside results."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class HoldStatus(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"
    ORDERED = "ordered"  # turned into an order by checkout


class OrderStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"


class CartStatus(StrEnum):
    OPEN = "open"
    ORDERED = "ordered"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductView:
    product_id: str
    name: str
    price_minor: int
    currency: str
    total_stock: int
    available: int
    reserved: int
    sold: int
    opens_at_ms: int | None
    closes_at_ms: int | None
    per_user_limit: int | None
    hold_ttl_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldView:
    hold_id: str
    cart_id: str
    user_id: str
    product_id: str
    quantity: int
    created_at_ms: int
    expires_at_ms: int
    status: HoldStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class CartView:
    cart_id: str
    user_id: str
    status: CartStatus
    hold_ids: tuple[str, ...]
    order_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderLine:
    product_id: str
    quantity: int
    unit_price_minor: int
    hold_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderView:
    order_id: str
    cart_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    amount_minor: int
    currency: str
    status: OrderStatus
    payment_status: PaymentStatus
    created_at_ms: int
    pay_by_ms: int
    payment_method: str
    sealed_details: str
    provider: str
    transaction_id: str
    payment_attempts: int
    failure: str  # why a failed order failed ("declined", "expired", ...), else ""
