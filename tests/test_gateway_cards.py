"""Card numbers are refused wherever they appear in a body (gateway.cards)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cards import (
    contains_card_number,
    luhn_valid,
    text_has_card_number,
    text_may_hold_card_number,
)

# Well-known test card numbers (all Luhn-valid), 13 to 19 digits.
TEST_PANS = [
    "4222222222222",  # Visa, 13
    "378282246310005",  # Amex, 15
    "4111111111111111",  # Visa, 16
    "5555555555554444",  # Mastercard, 16
    "6011111111111117",  # Discover, 16
    "3530111333300000",  # JCB, 16
    "4111111111111111110",  # 19 digits, Luhn-valid
]


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        if luhn_valid(prefix + d):
            return prefix + d
    raise AssertionError("a Luhn digit always exists")


@pytest.mark.parametrize("pan", TEST_PANS)
def test_known_test_cards_are_luhn_valid_and_detected(pan: str) -> None:
    assert luhn_valid(pan)
    assert text_has_card_number(pan)


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "my card is 4111111111111111 thanks",
        "pm_4111111111111111",
        "card:5555555555554444;exp=12/30",
    ],
)
def test_cards_typed_with_separators_or_inside_text_are_detected(text: str) -> None:
    assert text_has_card_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # fails Luhn
        "424242424242",  # 12 digits: too short for a card
        "10115",  # a postal code
        "2024-01-01T10:00:00Z",
        "pm_card_visa",
        "",
    ],
)
def test_ordinary_values_are_not_mistaken_for_cards(text: str) -> None:
    assert not text_has_card_number(text)


def test_a_card_hidden_in_a_longer_digit_run_is_still_found() -> None:
    assert text_has_card_number("99" + "4111111111111111" + "00")


def test_cards_are_found_anywhere_in_a_json_value() -> None:
    assert contains_card_number({"a": {"b": ["x", {"c": "4111111111111111"}]}})
    assert contains_card_number({"payment_method": 4111111111111111})
    assert contains_card_number({"4111111111111111": "key is the card"})
    assert contains_card_number([[[[["5555 5555 5555 4444"]]]]])
    assert not contains_card_number({"a": [1, 2.5, True, None, "pm_card_visa"]})


@settings(max_examples=200)
@given(
    body=st.integers(min_value=12, max_value=18).flatmap(
        lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n)
    ),
    before=st.text(alphabet="abcxyz :/_", max_size=8),
    after=st.text(alphabet="abcxyz :/_", max_size=8),
)
def test_every_luhn_valid_13_to_19_digit_number_is_refused(
    body: str, before: str, after: str
) -> None:
    pan = _luhn_complete(body)
    assert contains_card_number({"shipping_address": {"address_line1": before + pan + after}})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet="0123456789 -abc\u00e9\\\"", max_size=24),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet="0123456789ab", max_size=20), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(value=_JSON, ascii_only=st.booleans())
def test_the_byte_pre_check_never_lets_a_card_number_through(
    value: object, ascii_only: bool
) -> None:
    # The pre-check may say "maybe" too often, never "no" for a body that holds one.
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    if contains_card_number(json.loads(raw)):
        assert text_may_hold_card_number(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":"4111111111111111"}',
        b'{"a":4111111111111111}',
        b'{"a":"\\u0034111111111111111"}',  # digits spelled as escapes
        b'{"a":4.111111111111111e15}',  # a float's digits once decoded
        b'{"a":1E15}',
        '{"a":"\uff14\uff11\uff11\uff11"}'.encode(),  # full-width digits: the walk decides
    ],
)
def test_the_byte_pre_check_sends_suspect_bodies_to_the_full_scan(raw: bytes) -> None:
    assert text_may_hold_card_number(raw)


def test_a_hold_body_skips_the_full_scan() -> None:
    assert not text_may_hold_card_number(
        b'{"user_id":"alice","product_id":"sku-42","quantity":3}'
    )
