"""Rules of Checkout and RecordPayment (ledger/ledger.py): every outcome and reason."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import (
    Bucket,
    CartStatus,
    Checkout,
    CreateProduct,
    EventKind,
    HoldPlaced,
    HoldStatus,
    Ledger,
    Move,
    OrderLine,
    OrderPlaced,
    OrderStatus,
    PaymentOutcome,
    PaymentRecorded,
    PaymentStatus,
    Reason,
    RecordPayment,
    Rejected,
    Release,
    Reserve,
    Result,
    Settings,
)
from ledger.limits import DEFAULT_HOLD_TTL_MS, MAX_TEXT_LEN

T0 = 1_700_000_000_000
PAY_TTL = 600_000


def product(pid: str, price: int, total: int = 5, currency: str = "USD") -> CreateProduct:
    return CreateProduct(key=f"create-{pid}", product_id=pid, name=pid, price_minor=price,
                         total_stock=total, currency=currency)


def shop() -> Ledger:
    led = Ledger(Settings(payment_ttl_ms=PAY_TTL))
    led.apply(T0, [product("p1", 1_000), product("p2", 250), product("gbp", 10, currency="GBP")])
    return led


def one(led: Ledger, command: Any, at_ms: int = T0) -> Result:
    return led.apply(at_ms, [command]).results[0]


def reserve(key: str, user: str = "u1", quantity: int = 1, pid: str = "p1") -> Reserve:
    return Reserve(key=key, user_id=user, product_id=pid, quantity=quantity)


def pay(key: str, outcome: PaymentOutcome, amount: int, order: str = "o1") -> RecordPayment:
    return RecordPayment(key=key, order_id=order, outcome=outcome, amount_minor=amount,
                         provider="stripe", transaction_id=f"tx-{key}")


def ordered(led: Ledger) -> OrderPlaced:
    """u1 holds 2 x p1 and 1 x p2, then checks out cart c1 as order o1 (amount 2250)."""
    one(led, reserve("r1", quantity=2))
    one(led, reserve("r2", pid="p2"))
    result = one(led, Checkout(key="co", user_id="u1", cart_id="c1", payment_method="card",
                               sealed_details="sealed:abc"))
    assert isinstance(result, OrderPlaced)
    return result


# ---- Checkout ----------------------------------------------------------------------------


def test_checkout_turns_active_holds_into_one_pending_order_at_checkout_prices() -> None:
    led = shop()
    one(led, reserve("r1", quantity=2))
    one(led, reserve("r2", pid="p2"))
    one(led, reserve("r3", pid="p2"))
    one(led, Release(key="rel", user_id="u1", hold_id="h3"))
    applied = led.apply(T0 + 7, [Checkout(key="co", user_id="u1", cart_id="c1",
                                          payment_method="card", sealed_details="sealed")])
    lines = (
        OrderLine(product_id="p1", quantity=2, unit_price_minor=1_000, hold_id="h1"),
        OrderLine(product_id="p2", quantity=1, unit_price_minor=250, hold_id="h2"),
    )
    assert applied.results[0] == OrderPlaced(order_id="o1", cart_id="c1", user_id="u1",
                                             lines=lines, amount_minor=2_250, currency="USD",
                                             pay_by_ms=T0 + 7 + PAY_TTL)
    (event,) = applied.events
    assert event.kind is EventKind.ORDER_PLACED and event.moves == ()
    assert event.data is not None
    assert event.data["sealed_details"] == "sealed" and event.data["payment_method"] == "card"
    assert event.data["amount_minor"] == 2_250 and len(event.data["lines"]) == 2  # type: ignore[arg-type]
    order = led.order("o1")
    assert order is not None and order.status is OrderStatus.PENDING
    assert order.payment_status is PaymentStatus.PENDING and order.sealed_details == "sealed"
    hold = led.hold("h1")
    assert hold is not None and hold.status is HoldStatus.ORDERED
    cart = led.cart("c1")
    assert cart is not None and cart.status is CartStatus.ORDERED and cart.order_id == "o1"
    p1 = led.product("p1")
    assert p1 is not None and (p1.available, p1.reserved) == (3, 2)  # still reserved
    assert led.open_cart_of("u1") is None
    led.check_invariants()


def test_after_checkout_the_next_reserve_opens_a_new_cart() -> None:
    led = shop()
    ordered(led)
    result = one(led, reserve("r9"))
    assert isinstance(result, HoldPlaced) and result.cart_id == "c2"


def test_price_change_after_checkout_does_not_change_the_order() -> None:
    from ledger import UpdateProduct

    led = shop()
    placed = ordered(led)
    one(led, UpdateProduct(key="up", product_id="p1", price_minor=1))
    order = led.order(placed.order_id)
    assert order is not None and order.amount_minor == 2_250


def test_checkout_refusals() -> None:
    led = shop()
    one(led, reserve("r1", user="u2"))  # c1 is u2's
    one(led, reserve("r2", user="u3"))  # c2 is u3's; released below -> empty
    one(led, Release(key="rel", user_id="u3", hold_id="h2"))
    one(led, reserve("r3", user="u4"))  # c3 is u4's; expires below
    one(led, reserve("r4", user="u5"))
    one(led, reserve("r5", user="u5", pid="gbp"))  # c4 mixes currencies
    later = T0 + DEFAULT_HOLD_TTL_MS - 1
    one(led, reserve("r6", user="u6"), later)  # c5 for the already-ordered case
    one(led, Checkout(key="co-u6", user_id="u6", cart_id="c5"), later)
    expiry = T0 + DEFAULT_HOLD_TTL_MS
    cases: list[tuple[Checkout, Reason, str]] = [
        (Checkout(key="a", user_id="u1", cart_id="c99"), Reason.UNKNOWN_CART, "c99"),
        (Checkout(key="b", user_id="u1", cart_id="c1"), Reason.NOT_OWNER, "c1"),
        (Checkout(key="c", user_id="u3", cart_id="c2"), Reason.EMPTY_CART, "c2"),
        (Checkout(key="e", user_id="u6", cart_id="c5"), Reason.ALREADY_EXISTS, "o1"),
        (Checkout(key="f", user_id="bad user", cart_id="c1"), Reason.INVALID, "user_id"),
        (Checkout(key="g", user_id="u1", cart_id=""), Reason.INVALID, "cart_id"),
        (Checkout(key="h", user_id="u2", cart_id="c1", payment_method="x" * (MAX_TEXT_LEN + 1)),
         Reason.INVALID, "payment_method"),
        (Checkout(key="i", user_id="u2", cart_id="c1", sealed_details="x" * (MAX_TEXT_LEN + 1)),
         Reason.INVALID, "sealed_details"),
    ]
    for command, reason, text in cases:
        result = one(led, command, later)
        assert isinstance(result, Rejected) and result.reason is reason, command
        assert text in result.message
    mixed = one(led, Checkout(key="d", user_id="u5", cart_id="c4"), later)
    assert isinstance(mixed, Rejected) and mixed.reason is Reason.INVALID
    assert "GBP, USD" in mixed.message
    expired = one(led, Checkout(key="j", user_id="u4", cart_id="c3"), expiry)
    assert isinstance(expired, Rejected) and expired.reason is Reason.HOLD_EXPIRED
    assert led.cart("c4") is not None and led.cart("c4").status is CartStatus.OPEN  # type: ignore[union-attr]
    led.check_invariants()


def test_checkout_takes_only_the_active_holds_when_some_expired() -> None:
    led = shop()
    one(led, reserve("r1"))
    one(led, reserve("r2"), T0 + 10)
    result = one(led, Checkout(key="co", user_id="u1", cart_id="c1"),
                 T0 + DEFAULT_HOLD_TTL_MS)
    assert isinstance(result, OrderPlaced)
    assert [line.hold_id for line in result.lines] == ["h2"]


# ---- RecordPayment ------------------------------------------------------------------------


def test_paid_moves_units_reserved_to_sold_and_completes_the_order() -> None:
    led = shop()
    ordered(led)
    applied = led.apply(T0 + 1, [pay("pay", PaymentOutcome.PAID, 2_250)])
    assert applied.results[0] == PaymentRecorded(
        order_id="o1", outcome=PaymentOutcome.PAID, status=OrderStatus.COMPLETED,
        payment_status=PaymentStatus.PAID, amount_minor=2_250, transaction_id="tx-pay")
    (event,) = applied.events
    assert event.kind is EventKind.ORDER_COMPLETED and event.order_id == "o1"
    assert event.moves == (
        Move(product_id="p1", from_bucket=Bucket.RESERVED, to_bucket=Bucket.SOLD, quantity=2),
        Move(product_id="p2", from_bucket=Bucket.RESERVED, to_bucket=Bucket.SOLD, quantity=1),
    )
    assert [s.product_id for s in event.stock] == ["p1", "p2"]
    assert event.stock[0].sold == 2
    order = led.order("o1")
    assert order is not None and order.provider == "stripe" and order.payment_attempts == 1
    p1 = led.product("p1")
    assert p1 is not None and (p1.available, p1.reserved, p1.sold) == (3, 0, 2)
    led.check_invariants()


def test_declined_keeps_the_order_pending_and_counts_the_attempt() -> None:
    led = shop()
    ordered(led)
    applied = led.apply(T0 + 1, [pay("d1", PaymentOutcome.DECLINED, 2_250)])
    result = applied.results[0]
    assert isinstance(result, PaymentRecorded)
    assert (result.status, result.payment_status) == (OrderStatus.PENDING, PaymentStatus.PENDING)
    (event,) = applied.events
    assert event.kind is EventKind.PAYMENT_DECLINED and event.data is not None
    assert event.data["attempts"] == 1
    one(led, pay("d2", PaymentOutcome.DECLINED, 2_250))
    paid = one(led, pay("p", PaymentOutcome.PAID, 2_250))
    assert isinstance(paid, PaymentRecorded) and paid.status is OrderStatus.COMPLETED
    order = led.order("o1")
    assert order is not None and order.payment_attempts == 3


def test_failed_payment_returns_units_to_available_and_fails_the_order() -> None:
    led = Ledger()
    led.apply(T0, [product("p1", 1_000, total=2)])
    one(led, reserve("r1", quantity=2))
    one(led, Checkout(key="co", user_id="u1", cart_id="c1"))
    applied = led.apply(T0 + 1, [pay("f", PaymentOutcome.FAILED, 2_000)])
    result = applied.results[0]
    assert isinstance(result, PaymentRecorded) and result.status is OrderStatus.FAILED
    assert result.payment_status is PaymentStatus.FAILED
    failed, back = applied.events
    assert failed.kind is EventKind.ORDER_FAILED
    assert failed.moves == (Move(product_id="p1", from_bucket=Bucket.RESERVED,
                                 to_bucket=Bucket.AVAILABLE, quantity=2),)
    assert failed.data is not None and failed.data["failure"] == "payment_failed"
    assert back.kind is EventKind.BACK_IN_STOCK
    order = led.order("o1")
    assert order is not None and order.failure == "payment_failed"
    assert led.user_units("u1", "p1") == 0
    led.check_invariants()


def test_payment_refusals() -> None:
    led = shop()
    ordered(led)
    cases: list[tuple[RecordPayment, Reason]] = [
        (pay("a", PaymentOutcome.PAID, 2_250, order="o9"), Reason.UNKNOWN_ORDER),
        (pay("b", PaymentOutcome.PAID, 2_249), Reason.AMOUNT_MISMATCH),
        (pay("c", PaymentOutcome.PAID, -1), Reason.INVALID),
        (pay("d", PaymentOutcome.PAID, 2_250, order=""), Reason.INVALID),
        (RecordPayment(key="e", order_id="o1", outcome="paid", amount_minor=2_250),  # type: ignore[arg-type]
         Reason.INVALID),
        (RecordPayment(key="f", order_id="o1", outcome=PaymentOutcome.PAID, amount_minor=2_250,
                       provider="x" * (MAX_TEXT_LEN + 1)), Reason.INVALID),
        (RecordPayment(key="g", order_id="o1", outcome=PaymentOutcome.PAID, amount_minor=2_250,
                       transaction_id="x" * (MAX_TEXT_LEN + 1)), Reason.INVALID),
    ]
    for command, reason in cases:
        result = one(led, command)
        assert isinstance(result, Rejected) and result.reason is reason, command
    order = led.order("o1")
    assert order is not None and order.status is OrderStatus.PENDING
    assert order.payment_attempts == 0


@pytest.mark.parametrize("first", [PaymentOutcome.PAID, PaymentOutcome.FAILED])
@pytest.mark.parametrize("then", list(PaymentOutcome))
def test_payment_of_an_ended_order_is_not_pending(
    first: PaymentOutcome, then: PaymentOutcome
) -> None:
    led = shop()
    ordered(led)
    one(led, pay("first", first, 2_250))
    result = one(led, pay("then", then, 2_250))
    assert isinstance(result, Rejected) and result.reason is Reason.NOT_PENDING


def test_paid_after_the_payment_deadline_is_refused_as_expired_so_the_gateway_refunds() -> None:
    led = shop()
    placed = ordered(led)
    late = placed.pay_by_ms
    result = one(led, pay("late", PaymentOutcome.PAID, 2_250), late)
    assert isinstance(result, Rejected) and result.reason is Reason.HOLD_EXPIRED
    declined = one(led, pay("late-declined", PaymentOutcome.DECLINED, 2_250), late)
    assert isinstance(declined, Rejected) and declined.reason is Reason.NOT_PENDING
    order = led.order("o1")
    assert order is not None and order.failure == "expired"
    assert order.status is OrderStatus.FAILED and order.payment_status is PaymentStatus.FAILED


def test_amount_is_checked_before_the_order_state() -> None:
    led = shop()
    ordered(led)
    one(led, pay("p", PaymentOutcome.PAID, 2_250))
    result = one(led, pay("q", PaymentOutcome.PAID, 1))
    assert isinstance(result, Rejected) and result.reason is Reason.AMOUNT_MISMATCH
