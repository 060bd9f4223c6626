"""Ledger time: monotonic clock, exact lazy expiry, Expire, next_deadline_ms, pruning."""

from __future__ import annotations

from typing import Any

from ledger import (
    Checkout,
    CreateProduct,
    EventKind,
    Expire,
    Expired,
    HoldPlaced,
    HoldStatus,
    Ledger,
    OrderPlaced,
    OrderStatus,
    PaymentOutcome,
    Reason,
    RecordPayment,
    Rejected,
    Release,
    Reserve,
    Result,
    Settings,
)

T0 = 1_700_000_000_000
TTL = 10_000  # hold TTL of the test product
PAY_TTL = 20_000
RETENTION = 60_000


def sale(total: int = 5) -> Ledger:
    led = Ledger(Settings(payment_ttl_ms=PAY_TTL, retention_ms=RETENTION))
    led.apply(T0, [CreateProduct(key="create", product_id="p1", name="Sneaker",
                                 price_minor=100, total_stock=total, hold_ttl_ms=TTL)])
    return led


def one(led: Ledger, command: Any, at_ms: int) -> Result:
    return led.apply(at_ms, [command]).results[0]


def reserve(key: str, user: str = "u1", quantity: int = 1) -> Reserve:
    return Reserve(key=key, user_id=user, product_id="p1", quantity=quantity)


def test_ledger_time_is_the_running_max_of_batch_and_command_stamps() -> None:
    led = sale()
    assert led.now_ms == T0
    led.apply(T0 - 5_000, [reserve("r1")])  # a clock going back does not move time back
    assert led.now_ms == T0
    hold = led.hold("h1")
    assert hold is not None and hold.created_at_ms == T0
    stamped = Reserve(key="r2", user_id="u1", product_id="p1", quantity=1, at_ms=T0 + 50)
    led.apply(T0 + 10, [stamped])
    assert led.now_ms == T0 + 50
    led.apply(T0 + 20, [])
    assert led.now_ms == T0 + 50 and led.index == 4


def test_a_hold_expires_exactly_at_its_deadline_before_the_next_command() -> None:
    led = sale(1)
    one(led, reserve("r1"), T0)
    just_before = led.apply(T0 + TTL - 1, [reserve("r2", user="u2")])
    refused = just_before.results[0]
    assert isinstance(refused, Rejected) and refused.reason is Reason.SOLD_OUT
    at_deadline = led.apply(T0 + TTL, [reserve("r3", user="u2")])
    kinds = [e.kind for e in at_deadline.events]
    assert kinds == [EventKind.HOLD_EXPIRED, EventKind.BACK_IN_STOCK, EventKind.HOLD_PLACED,
                     EventKind.SOLD_OUT]
    expired = at_deadline.events[0]
    assert (expired.key, expired.hold_id, expired.user_id) == ("", "h1", "u1")
    assert [e.seq for e in at_deadline.events] == [0, 1, 2, 3]
    assert isinstance(at_deadline.results[0], HoldPlaced)
    hold = led.hold("h1")
    assert hold is not None and hold.status is HoldStatus.EXPIRED


def test_expiry_happens_between_commands_of_one_batch_at_their_own_stamps() -> None:
    led = sale(1)
    one(led, reserve("r1"), T0)
    early = Reserve(key="r2", user_id="u2", product_id="p1", quantity=1, at_ms=T0 + 1)
    late = Reserve(key="r3", user_id="u3", product_id="p1", quantity=1, at_ms=T0 + TTL)
    results = led.apply(T0 + 1, [early, late]).results
    assert isinstance(results[0], Rejected) and results[0].reason is Reason.SOLD_OUT
    assert isinstance(results[1], HoldPlaced)


def test_expire_reports_what_it_expired_and_nothing_twice() -> None:
    led = sale(5)
    one(led, reserve("r1", user="u1"), T0)
    one(led, reserve("r2", user="u2"), T0 + 5)
    one(led, reserve("r3", user="u3"), T0 + TTL + 100)  # expires h1 and h2 lazily first
    one(led, reserve("r4", user="u4"), T0 + TTL + 200)
    assert led.next_deadline_ms() == T0 + 2 * TTL + 100
    applied = led.apply(T0 + 2 * TTL + 200, [Expire(key="e1")])
    assert applied.results[0] == Expired(hold_ids=("h3", "h4"), order_ids=())
    assert [e.kind for e in applied.events] == [EventKind.HOLD_EXPIRED] * 2
    again = led.apply(T0 + 2 * TTL + 300, [Expire(key="e2")])
    assert again.results[0] == Expired(hold_ids=(), order_ids=())
    assert led.next_deadline_ms() is None
    led.check_invariants()


def test_expire_in_the_same_batch_after_time_moved_reports_nothing() -> None:
    led = sale(5)
    one(led, reserve("r1"), T0)
    applied = led.apply(T0 + TTL, [reserve("r2", user="u2"), Expire(key="e")])
    assert applied.results[1] == Expired(hold_ids=(), order_ids=())
    assert applied.events[0].kind is EventKind.HOLD_EXPIRED


def test_a_time_jump_expires_holds_and_orders_in_deadline_order() -> None:
    led = sale(5)
    one(led, reserve("r1", user="u1"), T0)
    one(led, Checkout(key="co", user_id="u1", cart_id="c1"), T0 + 1)  # pay by T0+1+PAY_TTL
    one(led, reserve("r2", user="u2"), T0 + 2)  # expires T0+2+TTL: first
    applied = led.apply(T0 + 10 * PAY_TTL, [Expire(key="e")])
    assert applied.results[0] == Expired(hold_ids=("h2",), order_ids=("o1",))
    assert [(e.kind, e.hold_id, e.order_id) for e in applied.events] == [
        (EventKind.HOLD_EXPIRED, "h2", ""),
        (EventKind.ORDER_EXPIRED, "", "o1"),
    ]
    order_event = applied.events[1]
    assert order_event.data is not None and order_event.data["failure"] == "expired"
    order = led.order("o1")
    assert order is not None and order.status is OrderStatus.FAILED
    product = led.product("p1")
    assert product is not None and (product.available, product.reserved) == (5, 0)
    assert led.user_units("u1", "p1") == 0


def test_an_order_is_due_exactly_at_pay_by() -> None:
    led = sale(5)
    one(led, reserve("r1"), T0)
    placed = one(led, Checkout(key="co", user_id="u1", cart_id="c1"), T0)
    assert isinstance(placed, OrderPlaced) and led.next_deadline_ms() == placed.pay_by_ms
    not_yet = led.apply(placed.pay_by_ms - 1, [Expire(key="e1")])
    assert not_yet.results[0] == Expired(hold_ids=(), order_ids=())
    due = led.apply(placed.pay_by_ms, [Expire(key="e2")])
    assert due.results[0] == Expired(hold_ids=(), order_ids=("o1",))


def test_ordered_holds_do_not_expire_with_their_hold_ttl() -> None:
    led = sale(5)
    one(led, reserve("r1"), T0)
    one(led, Checkout(key="co", user_id="u1", cart_id="c1"), T0)
    applied = led.apply(T0 + TTL, [Expire(key="e")])
    assert applied.results[0] == Expired(hold_ids=(), order_ids=())
    paid = one(led, RecordPayment(key="pay", order_id="o1", outcome=PaymentOutcome.PAID,
                                  amount_minor=100), T0 + TTL + 1)
    assert not isinstance(paid, Rejected)


def test_next_deadline_skips_released_holds() -> None:
    led = sale(5)
    one(led, reserve("r1"), T0)
    one(led, reserve("r2"), T0 + 100)
    assert led.next_deadline_ms() == T0 + TTL
    one(led, Release(key="rel", user_id="u1", hold_id="h1"), T0 + 200)
    assert led.next_deadline_ms() == T0 + 100 + TTL


def test_ended_records_are_pruned_after_retention_and_open_empty_carts_go_with_them() -> None:
    led = sale(5)
    one(led, reserve("r1", user="u1"), T0)
    one(led, Release(key="rel", user_id="u1", hold_id="h1"), T0 + 1)
    one(led, reserve("r2", user="u2"), T0 + 2)
    one(led, Checkout(key="co", user_id="u2", cart_id="c2"), T0 + 3)
    one(led, RecordPayment(key="pay", order_id="o1", outcome=PaymentOutcome.PAID,
                           amount_minor=100), T0 + 4)
    one(led, reserve("r3", user="u3"), T0 + 5)  # expires at the next command (TTL < RETENTION)
    assert led.apply(T0 + RETENTION, []).index  # an empty batch moves nothing
    assert led.hold("h1") is not None
    led.apply(T0 + 1 + RETENTION, [Expire(key="e1")])
    assert led.hold("h1") is None and led.cart("c1") is None and led.open_cart_of("u1") is None
    assert led.order("o1") is not None
    led.apply(T0 + 4 + RETENTION, [Expire(key="e2")])
    assert led.order("o1") is None and led.cart("c2") is None and led.hold("h2") is None
    h3 = led.hold("h3")
    assert h3 is not None and h3.status is HoldStatus.EXPIRED
    led.apply(T0 + 1 + 2 * RETENTION, [Expire(key="e3")])  # it ended at T0 + 1 + RETENTION
    assert led.hold("h3") is None and led.cart("c3") is None
    # Per-user counters outlive the records: the completed order still counts.
    assert led.user_units("u2", "p1") == 1
    product = led.product("p1")
    assert product is not None and (product.available, product.sold) == (4, 1)
    led.check_invariants()


def test_a_released_hold_of_an_ordered_cart_is_pruned_on_its_own_schedule() -> None:
    led = sale(5)
    one(led, reserve("r1"), T0)
    one(led, reserve("r2"), T0)
    one(led, Release(key="rel", user_id="u1", hold_id="h2"), T0 + 10)
    one(led, Checkout(key="co", user_id="u1", cart_id="c1"), T0 + 20)
    one(led, RecordPayment(key="pay", order_id="o1", outcome=PaymentOutcome.FAILED,
                           amount_minor=100), T0 + 30)
    led.apply(T0 + 10 + RETENTION, [Expire(key="e1")])
    cart = led.cart("c1")
    assert cart is not None and cart.hold_ids == ("h1",)
    led.apply(T0 + 30 + RETENTION, [Expire(key="e2")])
    assert led.cart("c1") is None and led.hold("h1") is None
    led.check_invariants()

