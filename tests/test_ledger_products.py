"""Rules of the catalogue: CreateProduct, UpdateProduct and Restock (ledger/ledger.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import (
    Bucket,
    CreateProduct,
    EventKind,
    Ledger,
    Move,
    ProductSaved,
    Reason,
    Rejected,
    Reserve,
    Restock,
    Restocked,
    Result,
    StockLevel,
    UpdateProduct,
)
from ledger.limits import MAX_ID_LEN, MAX_NAME_LEN, MAX_PRICE_MINOR, MAX_STOCK, MAX_TTL_MS

T0 = 1_700_000_000_000


def create(**overrides: Any) -> CreateProduct:
    fields: dict[str, Any] = {
        "key": "create-p1",
        "product_id": "p1",
        "name": "Sneaker",
        "price_minor": 12_999,
        "currency": "EUR",
        "total_stock": 5,
    }
    fields.update(overrides)
    return CreateProduct(**fields)


def one(led: Ledger, command: Any, at_ms: int = T0) -> Result:
    return led.apply(at_ms, [command]).results[0]


def stocked(total: int = 5) -> Ledger:
    led = Ledger()
    assert isinstance(one(led, create(total_stock=total)), ProductSaved)
    return led


# ---- CreateProduct -------------------------------------------------------------------


def test_create_product_puts_total_stock_in_available_with_one_outside_move() -> None:
    led = Ledger()
    applied = led.apply(T0, [create(per_user_limit=2, opens_at_ms=T0, closes_at_ms=T0 + 1)])
    result = applied.results[0]
    assert isinstance(result, ProductSaved)
    assert result.product == led.product("p1")
    view = result.product
    assert (view.total_stock, view.available, view.reserved, view.sold) == (5, 5, 0, 0)
    assert (view.currency, view.per_user_limit, view.updated_at_ms) == ("EUR", 2, T0)
    (event,) = applied.events
    assert event.kind is EventKind.PRODUCT_CREATED
    assert (event.index, event.seq, event.key, event.product_id) == (1, 0, "create-p1", "p1")
    assert event.moves == (Move(product_id="p1", from_bucket=Bucket.OUTSIDE,
                                to_bucket=Bucket.AVAILABLE, quantity=5),)
    assert event.stock == (StockLevel(product_id="p1", total_stock=5, available=5, reserved=0,
                                      sold=0),)
    assert event.data is not None and event.data["name"] == "Sneaker"


def test_create_product_with_no_stock_has_no_move_and_no_stock_event() -> None:
    led = Ledger()
    applied = led.apply(T0, [create(total_stock=0)])
    (event,) = applied.events
    assert event.moves == ()
    assert led.products()[0].available == 0


def test_create_product_refuses_an_existing_id_and_changes_nothing() -> None:
    led = stocked()
    before = led.digest()
    result = one(led, create(key="again", name="Other"))
    assert isinstance(result, Rejected) and result.reason is Reason.ALREADY_EXISTS
    product = led.product("p1")
    assert product is not None and product.name == "Sneaker"
    assert led.idempotency_keys() == 2
    assert before != led.digest()  # only the remembered key changed
    led.check_invariants()


INVALID_CREATES: list[tuple[str, dict[str, Any]]] = [
    ("product_id", {"product_id": ""}),
    ("product_id", {"product_id": "x" * (MAX_ID_LEN + 1)}),
    ("product_id", {"product_id": "has space"}),
    ("product_id", {"product_id": "tab\there"}),
    ("product_id", {"product_id": 7}),
    ("name", {"name": ""}),
    ("name", {"name": "n" * (MAX_NAME_LEN + 1)}),
    ("price_minor", {"price_minor": -1}),
    ("price_minor", {"price_minor": MAX_PRICE_MINOR + 1}),
    ("price_minor", {"price_minor": True}),
    ("currency", {"currency": "eur"}),
    ("currency", {"currency": "EURO"}),
    ("currency", {"currency": "E1R"}),
    ("currency", {"currency": "ÉUR"}),
    ("total_stock", {"total_stock": -1}),
    ("total_stock", {"total_stock": MAX_STOCK + 1}),
    ("opens_at_ms", {"opens_at_ms": -5}),
    ("closes_at_ms", {"closes_at_ms": 2**53}),
    ("per_user_limit", {"per_user_limit": 0}),
    ("hold_ttl_ms", {"hold_ttl_ms": 999}),
    ("hold_ttl_ms", {"hold_ttl_ms": MAX_TTL_MS + 1}),
    ("opens_at_ms", {"opens_at_ms": T0, "closes_at_ms": T0}),
]


@pytest.mark.parametrize(("field", "overrides"), INVALID_CREATES)
def test_create_product_out_of_bounds_is_invalid_and_names_the_field(
    field: str, overrides: dict[str, Any]
) -> None:
    led = Ledger()
    applied = led.apply(T0, [create(**overrides)])
    result = applied.results[0]
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID
    assert field in result.message
    assert led.products() == [] and applied.events == ()


@pytest.mark.parametrize(
    "overrides",
    [
        {"total_stock": MAX_STOCK, "price_minor": MAX_PRICE_MINOR},
        {"total_stock": 0, "price_minor": 0, "hold_ttl_ms": 1_000, "per_user_limit": 1},
        {"product_id": "x" * MAX_ID_LEN, "name": "n" * MAX_NAME_LEN, "hold_ttl_ms": MAX_TTL_MS},
        {"product_id": "sku/é-1", "opens_at_ms": T0, "closes_at_ms": T0 + 1},
    ],
)
def test_create_product_accepts_the_bounds_themselves(overrides: dict[str, Any]) -> None:
    led = Ledger()
    assert isinstance(one(led, create(**overrides)), ProductSaved)
    led.check_invariants()


# ---- UpdateProduct ---------------------------------------------------------------------


def test_update_product_changes_only_the_fields_given() -> None:
    led = stocked()
    one(led, UpdateProduct(key="u0", product_id="p1", opens_at_ms=T0 - 10, per_user_limit=3))
    applied = led.apply(T0 + 5, [UpdateProduct(key="u1", product_id="p1", price_minor=100)])
    result = applied.results[0]
    assert isinstance(result, ProductSaved)
    view = result.product
    assert (view.name, view.price_minor, view.currency) == ("Sneaker", 100, "EUR")
    assert (view.opens_at_ms, view.per_user_limit, view.updated_at_ms) == (T0 - 10, 3, T0 + 5)
    (event,) = applied.events
    assert event.kind is EventKind.PRODUCT_UPDATED and event.moves == ()
    assert event.data is not None and event.data["price_minor"] == 100


def test_update_product_clear_flags_reset_window_and_limit_to_none() -> None:
    led = Ledger()
    one(led, create(opens_at_ms=T0 + 10, closes_at_ms=T0 + 20, per_user_limit=1))
    result = one(
        led,
        UpdateProduct(key="u", product_id="p1", clear_opens=True, clear_closes=True,
                      clear_limit=True, name="Renamed", hold_ttl_ms=60_000),
    )
    assert isinstance(result, ProductSaved)
    view = result.product
    assert (view.opens_at_ms, view.closes_at_ms, view.per_user_limit) == (None, None, None)
    assert (view.name, view.hold_ttl_ms) == ("Renamed", 60_000)


def test_update_product_new_window_is_checked_against_the_kept_bound() -> None:
    led = Ledger()
    one(led, create(opens_at_ms=T0 + 10))
    result = one(led, UpdateProduct(key="u", product_id="p1", closes_at_ms=T0 + 10))
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID
    assert "opens_at_ms" in result.message
    ok = one(led, UpdateProduct(key="u2", product_id="p1", closes_at_ms=T0 + 11))
    assert isinstance(ok, ProductSaved) and ok.product.closes_at_ms == T0 + 11


@pytest.mark.parametrize(
    ("reason", "command"),
    [
        (Reason.UNKNOWN_PRODUCT, UpdateProduct(key="u", product_id="nope", name="x")),
        (Reason.INVALID, UpdateProduct(key="u", product_id="bad id", name="x")),
        (Reason.INVALID, UpdateProduct(key="u", product_id="p1")),
        (Reason.INVALID, UpdateProduct(key="u", product_id="p1", name="")),
        (Reason.INVALID, UpdateProduct(key="u", product_id="p1", price_minor=-1)),
        (Reason.INVALID, UpdateProduct(key="u", product_id="p1", hold_ttl_ms=10)),
        (Reason.INVALID, UpdateProduct(key="u", product_id="p1", per_user_limit=0)),
        (Reason.INVALID, UpdateProduct(key="u", product_id="p1", opens_at_ms=-1)),
        (Reason.INVALID, UpdateProduct(key="u", product_id="p1", opens_at_ms=1, clear_opens=True)),
        (Reason.INVALID,
         UpdateProduct(key="u", product_id="p1", closes_at_ms=1, clear_closes=True)),
        (Reason.INVALID,
         UpdateProduct(key="u", product_id="p1", per_user_limit=2, clear_limit=True)),
    ],
)
def test_update_product_refusals(reason: Reason, command: UpdateProduct) -> None:
    led = stocked()
    before = led.product("p1")
    applied = led.apply(T0, [command])
    result = applied.results[0]
    assert isinstance(result, Rejected) and result.reason is reason
    assert led.product("p1") == before and applied.events == ()


def test_update_product_limit_below_what_a_user_holds_refuses_only_new_units() -> None:
    led = stocked()
    one(led, Reserve(key="r1", user_id="u1", product_id="p1", quantity=3))
    one(led, UpdateProduct(key="u", product_id="p1", per_user_limit=2))
    result = one(led, Reserve(key="r2", user_id="u1", product_id="p1", quantity=1))
    assert isinstance(result, Rejected) and result.reason is Reason.LIMIT_REACHED
    assert led.user_units("u1", "p1") == 3


# ---- Restock ---------------------------------------------------------------------------


def test_restock_adds_units_outside_to_available_and_grows_total() -> None:
    led = stocked(5)
    applied = led.apply(T0, [Restock(key="r", product_id="p1", quantity=7)])
    assert applied.results[0] == Restocked(product_id="p1", total_stock=12, available=12)
    (event,) = applied.events
    assert event.kind is EventKind.RESTOCKED and event.data == {"quantity": 7}
    assert event.moves == (Move(product_id="p1", from_bucket=Bucket.OUTSIDE,
                                to_bucket=Bucket.AVAILABLE, quantity=7),)
    assert event.stock[0].total_stock == 12


def test_negative_restock_withdraws_available_units_and_announces_sold_out() -> None:
    led = stocked(5)
    applied = led.apply(T0, [Restock(key="r", product_id="p1", quantity=-5)])
    assert applied.results[0] == Restocked(product_id="p1", total_stock=0, available=0)
    restocked, sold_out = applied.events
    assert restocked.moves == (Move(product_id="p1", from_bucket=Bucket.AVAILABLE,
                                    to_bucket=Bucket.OUTSIDE, quantity=5),)
    assert (sold_out.kind, sold_out.key, sold_out.seq) == (EventKind.SOLD_OUT, "r", 1)
    assert sold_out.stock[0].available == 0


def test_restock_of_a_sold_out_product_announces_back_in_stock() -> None:
    led = stocked(1)
    one(led, Reserve(key="r1", user_id="u1", product_id="p1", quantity=1))
    applied = led.apply(T0, [Restock(key="r", product_id="p1", quantity=2)])
    assert [e.kind for e in applied.events] == [EventKind.RESTOCKED, EventKind.BACK_IN_STOCK]


def test_negative_restock_cannot_take_reserved_units() -> None:
    led = stocked(5)
    one(led, Reserve(key="r1", user_id="u1", product_id="p1", quantity=3))
    result = one(led, Restock(key="r", product_id="p1", quantity=-3))
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID
    assert "only 2 available" in result.message
    product = led.product("p1")
    assert product is not None and (product.total_stock, product.available) == (5, 2)


@pytest.mark.parametrize(
    ("reason", "command"),
    [
        (Reason.UNKNOWN_PRODUCT, Restock(key="r", product_id="nope", quantity=1)),
        (Reason.INVALID, Restock(key="r", product_id="p1", quantity=0)),
        (Reason.INVALID, Restock(key="r", product_id="p1", quantity=MAX_STOCK)),
        (Reason.INVALID, Restock(key="r", product_id="p1", quantity=MAX_STOCK + 1)),
        (Reason.INVALID, Restock(key="r", product_id="", quantity=1)),
    ],
)
def test_restock_refusals(reason: Reason, command: Restock) -> None:
    led = stocked(5)
    result = one(led, command)
    assert isinstance(result, Rejected) and result.reason is reason
    product = led.product("p1")
    assert product is not None and product.total_stock == 5


def test_restock_up_to_max_stock_is_accepted() -> None:
    led = stocked(5)
    result = one(led, Restock(key="r", product_id="p1", quantity=MAX_STOCK - 5))
    assert result == Restocked(product_id="p1", total_stock=MAX_STOCK, available=MAX_STOCK)
