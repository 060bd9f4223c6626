"""The ledger's own mutable records, and their read-only views.

Only ``ledger.ledger`` changes these; everything outside the package sees the frozen
views of ``ledger.views``. Besides the fields of its view, a record keeps what the
ledger needs to stay O(1) per command: a product's units in active holds and in pending
orders (so the books of a product are checked without scanning its holds), a cart's
active holds (checkout and the per-cart limit look at these only), and when a record
ended (so it can be pruned after the retention time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.events import StockLevel
from ledger.frozen import fast_builder
from ledger.views import (
    CartStatus,
    CartView,
    HoldStatus,
    HoldView,
    OrderLine,
    OrderStatus,
    OrderView,
    PaymentStatus,
    ProductView,
)

_stock_level = fast_builder(StockLevel)


@dataclass(slots=True)
class ProductRecord:
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
    held_units: int = 0  # units in active holds (part of reserved)
    pending_units: int = 0  # units in pending orders (the rest of reserved)

    def view(self) -> ProductView:
        return ProductView(
            product_id=self.product_id,
            name=self.name,
            price_minor=self.price_minor,
            currency=self.currency,
            total_stock=self.total_stock,
            available=self.available,
            reserved=self.reserved,
            sold=self.sold,
            opens_at_ms=self.opens_at_ms,
            closes_at_ms=self.closes_at_ms,
            per_user_limit=self.per_user_limit,
            hold_ttl_ms=self.hold_ttl_ms,
            updated_at_ms=self.updated_at_ms,
        )

    def level(self) -> StockLevel:
        return _stock_level(
            self.product_id, self.total_stock, self.available, self.reserved, self.sold
        )


@dataclass(slots=True)
class HoldRecord:
    hold_id: str
    number: int  # creation number: hold_id is "h<number>"
    cart_id: str
    user_id: str
    product_id: str
    quantity: int
    created_at_ms: int
    expires_at_ms: int
    status: HoldStatus = HoldStatus.ACTIVE
    ended_at_ms: int | None = None  # when released or expired (ordered holds end with the order)

    def view(self) -> HoldView:
        return HoldView(
            hold_id=self.hold_id,
            cart_id=self.cart_id,
            user_id=self.user_id,
            product_id=self.product_id,
            quantity=self.quantity,
            created_at_ms=self.created_at_ms,
            expires_at_ms=self.expires_at_ms,
            status=self.status,
        )


@dataclass(slots=True)
class CartRecord:
    cart_id: str
    user_id: str
    status: CartStatus = CartStatus.OPEN
    # Every hold of the cart not pruned yet, and the active ones among them, in the order
    # they were placed (dicts used as ordered sets: O(1) removal).
    hold_ids: dict[str, None] = field(default_factory=dict)
    active: dict[str, None] = field(default_factory=dict)
    had_expired: bool = False  # some hold of the cart expired (checkout says why it is empty)
    order_id: str | None = None

    def view(self) -> CartView:
        return CartView(
            cart_id=self.cart_id,
            user_id=self.user_id,
            status=self.status,
            hold_ids=tuple(self.hold_ids),
            order_id=self.order_id,
        )


@dataclass(slots=True)
class OrderRecord:
    order_id: str
    number: int  # creation number: order_id is "o<number>"
    cart_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    amount_minor: int
    currency: str
    created_at_ms: int
    pay_by_ms: int
    payment_method: str
    sealed_details: str
    status: OrderStatus = OrderStatus.PENDING
    payment_status: PaymentStatus = PaymentStatus.PENDING
    provider: str = ""
    transaction_id: str = ""
    payment_attempts: int = 0
    failure: str = ""
    ended_at_ms: int | None = None

    def view(self) -> OrderView:
        return OrderView(
            order_id=self.order_id,
            cart_id=self.cart_id,
            user_id=self.user_id,
            lines=self.lines,
            amount_minor=self.amount_minor,
            currency=self.currency,
            status=self.status,
            payment_status=self.payment_status,
            created_at_ms=self.created_at_ms,
            pay_by_ms=self.pay_by_ms,
            payment_method=self.payment_method,
            sealed_details=self.sealed_details,
            provider=self.provider,
            transaction_id=self.transaction_id,
            payment_attempts=self.payment_attempts,
            failure=self.failure,
        )
