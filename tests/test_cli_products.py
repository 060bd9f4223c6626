"""What `flashsale product ...` sends: exact money, unambiguous times, stable keys."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cli.money import format_minor, parse_currency, parse_price, to_minor
from cli.products import (
    create_product_command,
    describe,
    restock_command,
    table,
    update_product_command,
)
from cli.when import format_ms, parse_when_ms
from ledger.codec import decode_command
from ledger.commands import CreateProduct, Restock, UpdateProduct
from ledger.limits import MAX_ID_LEN, MAX_PRICE_MINOR

NOW_MS = 1_764_320_400_000  # 2025-11-28T09:00:00Z


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("19.99", "USD", 1999),
        ("0.1", "USD", 10),
        ("19.990", "USD", 1999),  # trailing zeros are exact
        ("1000", "USD", 100_000),
        ("0", "USD", 0),
        ("500", "JPY", 500),
        ("1.234", "KWD", 1234),
        ("0.29", "EUR", 29),  # a float would give 28.999999999999996
    ],
)
def test_prices_convert_to_minor_units_exactly(text: str, currency: str, minor: int) -> None:
    assert to_minor(parse_price(text), currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "complaint"),
    [
        ("19.999", "USD", "2 decimal places"),
        ("500.5", "JPY", "0 decimal places"),
        (str(Decimal(MAX_PRICE_MINOR + 1) / 100), "USD", "between 0 and"),
    ],
)
def test_prices_the_currency_cannot_express_are_refused(
    text: str, currency: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        to_minor(parse_price(text), currency)


@pytest.mark.parametrize("text", ["-1", "1e3", "NaN", "Infinity", "19,99", "", "$5", " . "])
def test_price_text_must_be_a_plain_decimal(text: str) -> None:
    with pytest.raises(ValueError, match="decimal amount"):
        parse_price(text)


def test_minor_units_format_back() -> None:
    assert format_minor(1999, "USD") == "19.99 USD"
    assert format_minor(5, "USD") == "0.05 USD"
    assert format_minor(500, "JPY") == "500 JPY"
    assert format_minor(1234, "KWD") == "1.234 KWD"


def test_currency_codes() -> None:
    assert parse_currency("usd") == "USD"
    with pytest.raises(ValueError, match="ISO 4217"):
        parse_currency("dollars")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2025-11-28T09:00:00Z", NOW_MS),
        ("2025-11-28T10:00:00+01:00", NOW_MS),
        ("2025-11-28T09:00:00.250Z", NOW_MS + 250),
        ("1970-01-01T00:00:00Z", 0),
        ("now", NOW_MS + 7),
        ("NOW", NOW_MS + 7),
    ],
)
def test_times_convert_to_epoch_milliseconds(text: str, ms: int) -> None:
    assert parse_when_ms(text, now_ms=NOW_MS + 7) == ms


def test_a_time_without_offset_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        parse_when_ms("2025-11-28T09:00:00", NOW_MS)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_when_ms("next friday", NOW_MS)


def test_times_format_as_rfc3339_utc() -> None:
    assert format_ms(NOW_MS) == "2025-11-28T09:00:00Z"
    assert format_ms(NOW_MS + 5) == "2025-11-28T09:00:00.005Z"
    assert format_ms(None) == "-"
    assert parse_when_ms(format_ms(NOW_MS + 5), 0) == NOW_MS + 5


def create(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "product_id": "p1",
        "name": "Sneaker",
        "price": Decimal("19.99"),
        "currency": "USD",
        "stock": 1000,
        "per_user_limit": 2,
        "hold_s": 300,
        "opens_at_ms": NOW_MS,
        "closes_at_ms": NOW_MS + 3_600_000,
    }
    args.update(overrides)
    return create_product_command(**args)  # type: ignore[arg-type]


def test_create_product_decodes_as_the_ledger_command() -> None:
    command = decode_command(create())
    assert isinstance(command, CreateProduct)
    assert command.price_minor == 1999
    assert command.total_stock == 1000
    assert command.per_user_limit == 2
    assert command.hold_ttl_ms == 300_000
    assert (command.opens_at_ms, command.closes_at_ms) == (NOW_MS, NOW_MS + 3_600_000)


def test_create_product_key_is_derived_from_the_arguments() -> None:
    assert create()["key"] == create()["key"], "the same `product add` twice: one product"
    assert create()["key"] != create(stock=999)["key"]
    assert create()["key"] != create(price=Decimal("19.98"))["key"]
    assert len(str(create()["key"])) <= MAX_ID_LEN
    assert create(key="mine")["key"] == "mine"


def test_create_product_refuses_a_window_that_closes_before_it_opens() -> None:
    with pytest.raises(ValueError, match="--closes must be after --opens"):
        create(closes_at_ms=NOW_MS)


def test_optional_terms_are_left_to_the_ledger_defaults() -> None:
    command = create(per_user_limit=None, hold_s=None, opens_at_ms=None, closes_at_ms=None)
    decoded = decode_command(command)
    assert isinstance(decoded, CreateProduct)
    assert decoded.per_user_limit is None and decoded.opens_at_ms is None
    assert "hold_ttl_ms" not in command


def test_restock_keys_are_fresh_per_invocation() -> None:
    a, b = (
        restock_command(product_id="p1", quantity=5),
        restock_command(product_id="p1", quantity=5),
    )
    assert a["key"] != b["key"], "restocking 5 twice adds 10"
    decoded = decode_command(a)
    assert isinstance(decoded, Restock) and decoded.quantity == 5
    assert restock_command(product_id="p1", quantity=-3, key="k")["key"] == "k"
    with pytest.raises(ValueError, match="changes nothing"):
        restock_command(product_id="p1", quantity=0)


def test_update_sends_only_what_changes() -> None:
    command = update_product_command(
        product_id="p1", currency="JPY", price=Decimal("1500"), never_closes=True
    )
    decoded = decode_command(command)
    assert isinstance(decoded, UpdateProduct)
    assert decoded.price_minor == 1500
    assert decoded.clear_closes and not decoded.clear_opens
    assert decoded.name is None and decoded.closes_at_ms is None
    with pytest.raises(ValueError, match="nothing to update"):
        update_product_command(product_id="p1", currency="USD")


PRODUCT = {
    "product_id": "p1",
    "name": "Sneaker",
    "price_minor": 1999,
    "currency": "USD",
    "total_stock": 1000,
    "available": 990,
    "reserved": 7,
    "sold": 3,
    "opens_at_ms": NOW_MS,
    "closes_at_ms": None,
    "per_user_limit": None,
    "hold_ttl_ms": 300_000,
    "updated_at_ms": NOW_MS,
}


def test_products_print_with_their_prices_and_stock() -> None:
    text = describe(PRODUCT)
    assert "19.99 USD" in text
    assert "990 available, 7 reserved, 3 sold of 1000" in text
    assert "no limit" in text and "2025-11-28T09:00:00Z .. -" in text
    rows = table([PRODUCT]).splitlines()
    assert rows[0].split()[:3] == ["ID", "NAME", "PRICE"]
    assert rows[1].split()[:6] == ["p1", "Sneaker", "19.99", "USD", "990", "7"]
