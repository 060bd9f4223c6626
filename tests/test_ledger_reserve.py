"""Rules of Reserve and Release (ledger/ledger.py): every reason, every event."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import (
    Bucket,
    CreateProduct,
    EventKind,
    HoldPlaced,
    HoldReleased,
    HoldStatus,
    Ledger,
    Move,
    Reason,
    Rejected,
    Release,
    Reserve,
    Result,
)
from ledger.limits import DEFAULT_HOLD_TTL_MS, MAX_HOLDS_PER_CART, MAX_QUANTITY

T0 = 1_700_000_000_000


def sale(total: int = 5, **overrides: Any) -> Ledger:
    led = Ledger()
    fields: dict[str, Any] = {
        "key": "create-p1",
        "product_id": "p1",
        "name": "Sneaker",
        "price_minor": 1_000,
        "total_stock": total,
    }
    fields.update(overrides)
    led.apply(T0, [CreateProduct(**fields)])
    return led


def one(led: Ledger, command: Any, at_ms: int = T0) -> Result:
    return led.apply(at_ms, [command]).results[0]


def reserve(key: str, user: str = "u1", quantity: int = 1, product: str = "p1") -> Reserve:
    return Reserve(key=key, user_id=user, product_id=product, quantity=quantity)


# ---- Reserve: success ---------------------------------------------------------------------


def test_reserve_moves_units_to_reserved_under_a_hold_with_the_product_ttl() -> None:
    led = sale(5, hold_ttl_ms=60_000)
    applied = led.apply(T0 + 1, [reserve("r1", quantity=2)])
    result = applied.results[0]
    assert result == HoldPlaced(hold_id="h1", cart_id="c1", user_id="u1", product_id="p1",
                                quantity=2, expires_at_ms=T0 + 1 + 60_000)
    product = led.product("p1")
    assert product is not None and (product.available, product.reserved) == (3, 2)
    (event,) = applied.events
    assert event.kind is EventKind.HOLD_PLACED
    assert (event.key, event.user_id, event.hold_id, event.cart_id) == ("r1", "u1", "h1", "c1")
    assert event.moves == (Move(product_id="p1", from_bucket=Bucket.AVAILABLE,
                                to_bucket=Bucket.RESERVED, quantity=2),)
    assert event.stock[0].available == 3
    assert event.data == {"quantity": 2, "expires_at_ms": T0 + 1 + 60_000}
    hold = led.hold("h1")
    assert hold is not None and hold.status is HoldStatus.ACTIVE and hold.created_at_ms == T0 + 1


def test_holds_of_one_user_share_their_open_cart_and_users_get_their_own() -> None:
    led = sale(5)
    a = one(led, reserve("r1", "u1"))
    b = one(led, reserve("r2", "u1"))
    c = one(led, reserve("r3", "u2"))
    assert isinstance(a, HoldPlaced) and isinstance(b, HoldPlaced) and isinstance(c, HoldPlaced)
    assert a.cart_id == b.cart_id == "c1" and c.cart_id == "c2"
    assert [h.hold_id for h in led.holds_of_cart("c1")] == ["h1", "h2"]
    cart = led.open_cart_of("u1")
    assert cart is not None and cart.hold_ids == ("h1", "h2")
    assert led.open_cart_of("nobody") is None and led.holds_of_cart("c9") == []


def test_the_reserve_taking_the_last_unit_announces_sold_out() -> None:
    led = sale(2)
    applied = led.apply(T0, [reserve("r1", quantity=2)])
    assert [e.kind for e in applied.events] == [EventKind.HOLD_PLACED, EventKind.SOLD_OUT]
    assert applied.events[1].key == "r1" and applied.events[1].stock[0].available == 0


def test_default_hold_ttl_is_five_minutes() -> None:
    led = sale(1)
    result = one(led, reserve("r1"))
    assert isinstance(result, HoldPlaced) and result.expires_at_ms == T0 + DEFAULT_HOLD_TTL_MS


# ---- Reserve: every refusal ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "product", "command", "at_ms"),
    [
        (Reason.UNKNOWN_PRODUCT, {}, reserve("r", product="nope"), T0),
        (Reason.NOT_OPEN, {"opens_at_ms": T0 + 10}, reserve("r"), T0 + 9),
        (Reason.CLOSED, {"closes_at_ms": T0 + 10}, reserve("r"), T0 + 10),
        (Reason.INVALID, {}, reserve("r", quantity=0), T0),
        (Reason.INVALID, {}, reserve("r", quantity=MAX_QUANTITY + 1), T0),
        (Reason.INVALID, {}, reserve("r", user=""), T0),
        (Reason.INVALID, {}, reserve("r", user="a b"), T0),
        (Reason.INVALID, {}, reserve("r", product=""), T0),
        (Reason.LIMIT_REACHED, {"per_user_limit": 2}, reserve("r", quantity=3), T0),
        (Reason.SOLD_OUT, {}, reserve("r", quantity=6), T0),
    ],
)
def test_reserve_refusals_change_no_stock_and_emit_reserve_refused(
    reason: Reason, product: dict[str, Any], command: Reserve, at_ms: int
) -> None:
    led = sale(5, **product)
    applied = led.apply(at_ms, [command])
    result = applied.results[0]
    assert isinstance(result, Rejected) and result.reason is reason, result
    p = led.product("p1")
    assert p is not None and (p.available, p.reserved) == (5, 0)
    (event,) = applied.events
    assert event.kind is EventKind.RESERVE_REFUSED and event.key == "r"
    assert event.data is not None and event.data["reason"] == reason.value
    assert event.moves == ()
    led.check_invariants()


def test_reserve_quantity_of_wrong_type_is_invalid() -> None:
    led = sale(5)
    result = one(led, Reserve(key="r", user_id="u1", product_id="p1", quantity=True))
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID
    bad_user = Reserve(key="r2", user_id=3, product_id=["p1"], quantity=1)  # type: ignore[arg-type]
    applied = led.apply(T0, [bad_user])
    assert isinstance(applied.results[0], Rejected)
    assert applied.results[0].reason is Reason.INVALID
    assert applied.events[0].user_id == "" and applied.events[0].product_id == ""


def test_sold_out_refusal_tells_what_was_available() -> None:
    led = sale(3)
    one(led, reserve("r1", "u1", 2))
    applied = led.apply(T0, [reserve("r2", "u2", 2)])
    result = applied.results[0]
    assert isinstance(result, Rejected) and result.reason is Reason.SOLD_OUT
    assert result.available == 1
    assert applied.events[0].data == {"reason": "sold_out", "quantity": 2, "available": 1}


def test_window_bounds_open_at_opens_and_close_at_closes() -> None:
    led = sale(5, opens_at_ms=T0 + 10, closes_at_ms=T0 + 20)
    assert isinstance(one(led, reserve("r1"), T0 + 10), HoldPlaced)
    assert isinstance(one(led, reserve("r2"), T0 + 19), HoldPlaced)
    late = one(led, reserve("r3"), T0 + 20)
    assert isinstance(late, Rejected) and late.reason is Reason.CLOSED


def test_per_user_limit_counts_active_holds_pending_and_completed_orders() -> None:
    from ledger import Checkout, PaymentOutcome, RecordPayment

    led = sale(10, per_user_limit=3)
    one(led, reserve("r1", quantity=1))
    placed = one(led, Checkout(key="co", user_id="u1", cart_id="c1"))
    assert not isinstance(placed, Rejected)
    one(led, RecordPayment(key="pay", order_id="o1", outcome=PaymentOutcome.PAID,
                           amount_minor=1_000))
    one(led, reserve("r2", quantity=1))
    one(led, Checkout(key="co2", user_id="u1", cart_id="c2"))
    one(led, reserve("r3", quantity=1))
    assert led.user_units("u1", "p1") == 3  # completed + pending + active
    refused = one(led, reserve("r4", quantity=1))
    assert isinstance(refused, Rejected) and refused.reason is Reason.LIMIT_REACHED
    assert isinstance(one(led, reserve("r5", user="u2", quantity=3)), HoldPlaced)


def test_released_and_expired_units_no_longer_count_against_the_limit() -> None:
    led = sale(10, per_user_limit=2)
    one(led, reserve("r1", quantity=2))
    one(led, Release(key="rel", user_id="u1", hold_id="h1"))
    assert isinstance(one(led, reserve("r2", quantity=2)), HoldPlaced)
    later = T0 + DEFAULT_HOLD_TTL_MS
    assert isinstance(one(led, reserve("r3", quantity=2), later), HoldPlaced)


def test_a_cart_holds_at_most_max_holds_per_cart_active_holds() -> None:
    led = sale(MAX_HOLDS_PER_CART + 5)
    batch = [reserve(f"r{i}") for i in range(MAX_HOLDS_PER_CART)]
    assert all(isinstance(r, HoldPlaced) for r in led.apply(T0, batch).results)
    refused = one(led, reserve("one-more"))
    assert isinstance(refused, Rejected) and refused.reason is Reason.LIMIT_REACHED
    assert "c1" in refused.message
    one(led, Release(key="rel", user_id="u1", hold_id="h1"))
    assert isinstance(one(led, reserve("after-release")), HoldPlaced)


# ---- Release -----------------------------------------------------------------------------


def test_release_returns_units_to_available() -> None:
    led = sale(1)
    one(led, reserve("r1"))
    applied = led.apply(T0 + 5, [Release(key="rel", user_id="u1", hold_id="h1")])
    assert applied.results[0] == HoldReleased(hold_id="h1", product_id="p1", quantity=1)
    released, back = applied.events
    assert released.kind is EventKind.HOLD_RELEASED and released.hold_id == "h1"
    assert released.moves == (Move(product_id="p1", from_bucket=Bucket.RESERVED,
                                   to_bucket=Bucket.AVAILABLE, quantity=1),)
    assert back.kind is EventKind.BACK_IN_STOCK
    hold = led.hold("h1")
    assert hold is not None and hold.status is HoldStatus.RELEASED
    product = led.product("p1")
    assert product is not None and (product.available, product.reserved) == (1, 0)


def test_release_refusals() -> None:
    from ledger import Checkout

    led = sale(5)
    one(led, reserve("r1"))
    one(led, reserve("r2"))
    one(led, Release(key="rel-h2", user_id="u1", hold_id="h2"))
    one(led, reserve("r3", user="u2"))
    cases: list[tuple[Release, Reason, str]] = [
        (Release(key="a", user_id="u1", hold_id="h99"), Reason.UNKNOWN_HOLD, "h99"),
        (Release(key="b", user_id="u2", hold_id="h1"), Reason.NOT_OWNER, "h1"),
        (Release(key="c", user_id="u1", hold_id="h2"), Reason.INVALID, "already released"),
        (Release(key="d", user_id="bad user", hold_id="h1"), Reason.INVALID, "user_id"),
        (Release(key="e", user_id="u1", hold_id=""), Reason.INVALID, "hold_id"),
    ]
    for command, reason, text in cases:
        result = one(led, command)
        assert isinstance(result, Rejected) and result.reason is reason, command
        assert text in result.message
    one(led, Checkout(key="co", user_id="u1", cart_id="c1"))
    ordered = one(led, Release(key="f", user_id="u1", hold_id="h1"))
    assert isinstance(ordered, Rejected) and ordered.reason is Reason.INVALID
    assert "o1" in ordered.message
    expired = one(led, Release(key="g", user_id="u2", hold_id="h3"), T0 + DEFAULT_HOLD_TTL_MS)
    assert isinstance(expired, Rejected) and expired.reason is Reason.HOLD_EXPIRED
    led.check_invariants()
