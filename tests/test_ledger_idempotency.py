"""Idempotency (invariant 3): same key + same command -> same result, no second effect;
keys are forgotten by retention and by the cap, deterministically. Also Configure."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import (
    Checkout,
    Configure,
    Configured,
    CreateProduct,
    EventKind,
    Expire,
    HoldPlaced,
    Ledger,
    OrderPlaced,
    PaymentOutcome,
    Reason,
    RecordPayment,
    Rejected,
    Reserve,
    Result,
    Settings,
)
from ledger.idempotency import IdempotencyMemory, same_command
from ledger.limits import MAX_ID_LEN, MAX_TTL_MS
from ledger.settings import MAX_IDEMPOTENCY_KEYS, MAX_RETENTION_MS, MIN_RETENTION_MS, MIN_TTL_MS

T0 = 1_700_000_000_000
RETENTION = 60_000


def sale(total: int = 5, **settings: int) -> Ledger:
    led = Ledger(Settings(retention_ms=RETENTION, **settings))
    led.apply(T0, [CreateProduct(key="create", product_id="p1", name="Sneaker",
                                 price_minor=100, total_stock=total, hold_ttl_ms=MAX_TTL_MS)])
    return led


def one(led: Ledger, command: Any, at_ms: int = T0) -> Result:
    return led.apply(at_ms, [command]).results[0]


def reserve(key: str, user: str = "u1", quantity: int = 1) -> Reserve:
    return Reserve(key=key, user_id=user, product_id="p1", quantity=quantity)


def test_a_retried_reserve_gets_the_same_hold_and_changes_nothing() -> None:
    led = sale()
    first = one(led, reserve("k1"))
    digest = led.digest()
    applied = led.apply(T0 + 5, [Reserve(key="k1", user_id="u1", product_id="p1", quantity=1,
                                         at_ms=T0 + 5)])
    assert applied.results[0] == first and applied.events == ()
    product = led.product("p1")
    assert product is not None and product.reserved == 1
    assert led.hold("h2") is None
    assert led.digest() != digest  # only index and time moved
    led.check_invariants()


def test_retries_inside_one_batch_are_deduplicated_too() -> None:
    led = sale()
    results = led.apply(T0, [reserve("k1"), reserve("k1"), reserve("k1")]).results
    assert results[0] == results[1] == results[2]
    assert led.user_units("u1", "p1") == 1


def test_a_key_reused_for_another_command_is_refused_and_changes_nothing() -> None:
    led = sale()
    one(led, reserve("k1"))
    for other in (reserve("k1", quantity=2), reserve("k1", user="u2"), Expire(key="k1")):
        applied = led.apply(T0, [other])
        result = applied.results[0]
        assert isinstance(result, Rejected) and result.reason is Reason.KEY_REUSED
        assert applied.events == ()
    assert led.user_units("u1", "p1") == 1 and led.user_units("u2", "p1") == 0
    # The refusal is not remembered over the original: a true retry still works.
    assert isinstance(one(led, reserve("k1")), HoldPlaced)


def test_a_refusal_is_remembered_and_a_retry_gets_the_same_refusal() -> None:
    led = sale(1)
    one(led, reserve("other", user="u2"))
    refused = one(led, reserve("k1"))
    assert isinstance(refused, Rejected) and refused.reason is Reason.SOLD_OUT
    one(led, Checkout(key="co", user_id="u2", cart_id="c1"))
    one(led, RecordPayment(key="pay", order_id="o1", outcome=PaymentOutcome.FAILED,
                           amount_minor=100))  # the unit is available again
    applied = led.apply(T0, [reserve("k1")])
    assert applied.results[0] == refused and applied.events == ()


def test_a_retried_checkout_and_payment_make_one_order_and_one_charge() -> None:
    led = sale()
    one(led, reserve("k1"))
    checkout = Checkout(key="co", user_id="u1", cart_id="c1")
    placed = one(led, checkout)
    assert isinstance(placed, OrderPlaced)
    assert one(led, checkout) == placed and led.order("o2") is None
    payment = RecordPayment(key="pay", order_id="o1", outcome=PaymentOutcome.PAID,
                            amount_minor=100)
    paid = one(led, payment)
    assert one(led, payment) == paid
    product = led.product("p1")
    assert product is not None and product.sold == 1


def test_keys_are_forgotten_after_retention_of_ledger_time() -> None:
    led = sale()
    first = one(led, reserve("k1"), T0)
    one(led, reserve("k2"), T0 + 10)
    led.apply(T0 + RETENTION - 1, [])
    assert led.idempotency_keys() == 3
    assert one(led, reserve("k1"), T0 + RETENTION - 1) == first
    # At exactly retention after first use the key is gone: the same key is a new command.
    second = one(led, reserve("k1"), T0 + RETENTION)
    assert isinstance(second, HoldPlaced) and second.hold_id == "h3"
    assert led.idempotency_keys() == 2  # k2 and the new k1 (create was forgotten too)
    led.check_invariants()


def test_beyond_the_cap_the_oldest_keys_are_forgotten_first() -> None:
    led = sale(max_idempotency_keys=3)
    led.apply(T0, [reserve(f"k{i}", user=f"u{i}") for i in range(4)])
    assert led.idempotency_keys() == 3
    again = one(led, reserve("k0", user="u0"))
    assert isinstance(again, HoldPlaced) and again.hold_id == "h5"  # forgotten: applied anew
    assert one(led, reserve("k3", user="u3")) == HoldPlaced(
        hold_id="h4", cart_id="c4", user_id="u3", product_id="p1", quantity=1,
        expires_at_ms=T0 + MAX_TTL_MS)


@pytest.mark.parametrize("key", ["", "k" * (MAX_ID_LEN + 1), None])
def test_a_command_without_a_valid_key_is_invalid_and_not_remembered(key: Any) -> None:
    led = sale()
    applied = led.apply(T0, [Reserve(key=key, user_id="u1", product_id="p1", quantity=1)])
    result = applied.results[0]
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID
    assert "key" in result.message and applied.events == ()
    assert led.idempotency_keys() == 1


def test_undecodable_commands_are_invalid_and_not_remembered() -> None:
    led = sale()
    applied = led.apply_encoded(T0, [
        {"type": "reserve", "key": "k1", "user_id": "u1", "product_id": "p1", "quantity": "1"},
        {"type": "reserve", "key": "k1", "user_id": "u1", "product_id": "p1", "quantity": 1},
    ])
    bad, good = applied.results
    assert isinstance(bad, Rejected) and bad.reason is Reason.INVALID and "quantity" in bad.message
    assert isinstance(good, HoldPlaced)


def test_same_command_ignores_only_at_ms() -> None:
    assert same_command(reserve("k"), Reserve(key="k", user_id="u1", product_id="p1",
                                                quantity=1, at_ms=99))
    assert not same_command(reserve("k"), reserve("k", quantity=2))
    assert not same_command(reserve("k"), Expire(key="k"))


def test_memory_reports_its_own_inconsistency() -> None:
    memory = IdempotencyMemory()
    memory.remember("a", reserve("a"), Rejected(reason=Reason.INVALID, message="x"), 5)
    memory.remember("b", reserve("b"), Rejected(reason=Reason.INVALID, message="x"), 4)
    assert memory.problems() == ["idempotency memory: key 'b' is older than the key before it"]
    memory._order.append("c")
    assert "3 keys in order" in memory.problems()[0]


# ---- Configure ---------------------------------------------------------------------------


def test_configure_changes_only_what_it_names_and_announces_it() -> None:
    led = sale()
    applied = led.apply(T0, [Configure(key="cfg", payment_ttl_ms=30_000)])
    assert applied.results[0] == Configured(payment_ttl_ms=30_000, retention_ms=RETENTION,
                                            max_idempotency_keys=2_000_000)
    (event,) = applied.events
    assert event.kind is EventKind.SETTINGS_CHANGED
    assert event.data == {"payment_ttl_ms": 30_000, "retention_ms": RETENTION,
                          "max_idempotency_keys": 2_000_000}
    assert led.settings == Settings(payment_ttl_ms=30_000, retention_ms=RETENTION)
    one(led, reserve("k1"))
    placed = one(led, Checkout(key="co", user_id="u1", cart_id="c1"), T0 + 1)
    assert isinstance(placed, OrderPlaced) and placed.pay_by_ms == T0 + 1 + 30_000


def test_lowering_the_cap_or_the_retention_forgets_at_once() -> None:
    led = sale()
    led.apply(T0, [reserve(f"k{i}", user=f"u{i}") for i in range(5)])
    led.apply(T0 + 5_000, [Configure(key="cap", max_idempotency_keys=2)])
    assert led.idempotency_keys() == 2
    led.check_invariants()
    led.apply(T0 + 5_000, [Configure(key="ret", retention_ms=MIN_RETENTION_MS)])
    assert led.idempotency_keys() == 2  # k4 (T0) is now too old; the two Configures stay
    led.check_invariants()


@pytest.mark.parametrize(
    "command",
    [
        Configure(key="c"),
        Configure(key="c", payment_ttl_ms=MIN_TTL_MS - 1),
        Configure(key="c", payment_ttl_ms=MAX_TTL_MS + 1),
        Configure(key="c", retention_ms=MIN_RETENTION_MS - 1),
        Configure(key="c", retention_ms=MAX_RETENTION_MS + 1),
        Configure(key="c", max_idempotency_keys=0),
        Configure(key="c", max_idempotency_keys=MAX_IDEMPOTENCY_KEYS + 1),
        Configure(key="c", max_idempotency_keys=True),
    ],
)
def test_configure_out_of_bounds_is_invalid(command: Configure) -> None:
    led = sale()
    applied = led.apply(T0, [command])
    result = applied.results[0]
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID
    assert applied.events == () and led.settings == Settings(retention_ms=RETENTION)


@pytest.mark.parametrize(
    "fields",
    [{"payment_ttl_ms": 0}, {"retention_ms": MAX_RETENTION_MS + 1},
     {"max_idempotency_keys": -1}],
)
def test_settings_out_of_bounds_raise_value_error_naming_the_field(
    fields: dict[str, int]
) -> None:
    with pytest.raises(ValueError, match=next(iter(fields))):
        Settings(**fields)
