"""The wire format (ledger/codec.py): lossless round trips and strict decoding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import COMMAND_TYPES, RESULT_TYPES, Event, JSONValue, Rejected, Reserve
from ledger.codec import (
    MAX_JSON_DEPTH,
    DecodeError,
    _decoder_for,
    decode_command,
    decode_event,
    decode_result,
    decode_view,
    encode_command,
    encode_event,
    encode_result,
    encode_view,
)
from ledger.commands import PaymentOutcome, RecordPayment
from ledger.reasons import Reason
from ledger.views import CartView, HoldView, OrderLine, OrderView, ProductView

json_values: st.SearchStrategy[JSONValue] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=10,
)
events = st.builds(
    Event,
    data=st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=4),
)


def through_json(value: dict[str, JSONValue]) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("name", sorted(COMMAND_TYPES))
def test_every_command_survives_encode_json_decode(name: str) -> None:
    @settings(max_examples=40, deadline=None)
    @given(st.from_type(COMMAND_TYPES[name]))
    def round_trip(command: Any) -> None:
        wire = encode_command(command)
        assert wire["type"] == name
        assert decode_command(through_json(wire)) == command

    round_trip()


@pytest.mark.parametrize("name", sorted(RESULT_TYPES))
def test_every_result_survives_encode_json_decode(name: str) -> None:
    @settings(max_examples=40, deadline=None)
    @given(st.from_type(RESULT_TYPES[name]))
    def round_trip(result: Any) -> None:
        wire = encode_result(result)
        assert wire["type"] == name and wire["ok"] is (name != "rejected")
        assert decode_result(through_json(wire)) == result

    round_trip()


@settings(max_examples=60, deadline=None)
@given(events)
def test_events_survive_encode_json_decode(event: Event) -> None:
    assert decode_event(through_json(encode_event(event))) == event


@pytest.mark.parametrize("cls", [ProductView, HoldView, CartView, OrderView, OrderLine])
def test_views_survive_encode_json_decode(cls: Any) -> None:
    @settings(max_examples=30, deadline=None)
    @given(st.from_type(cls))
    def round_trip(view: Any) -> None:
        assert decode_view(cls, through_json(encode_view(view))) == view

    round_trip()


def test_wire_forms_use_enum_values_and_lists() -> None:
    payment = RecordPayment(key="k", order_id="o1", outcome=PaymentOutcome.PAID, amount_minor=5)
    wire = encode_command(payment)
    assert wire == {"type": "record_payment", "key": "k", "at_ms": 0, "order_id": "o1",
                    "outcome": "paid", "amount_minor": 5, "provider": "", "transaction_id": ""}
    assert type(wire["outcome"]) is str
    assert encode_result(Rejected(reason=Reason.SOLD_OUT, message="m", available=0)) == {
        "type": "rejected", "ok": False, "reason": "sold_out", "message": "m", "available": 0}


def test_at_ms_may_be_omitted_and_defaults_apply() -> None:
    command = decode_command({"type": "reserve", "key": "k", "user_id": "u", "product_id": "p",
                              "quantity": 1})
    assert command == Reserve(key="k", user_id="u", product_id="p", quantity=1, at_ms=0)


RESERVE = {"type": "reserve", "key": "k", "user_id": "u", "product_id": "p", "quantity": 1}


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ([], "command"),
        ({"key": "k"}, "type"),
        ({"type": "teleport", "key": "k"}, "type"),
        ({"type": 5, "key": "k"}, "type"),
        ({**RESERVE, "quantity": True}, "quantity"),
        ({**RESERVE, "quantity": 1.0}, "quantity"),
        ({**RESERVE, "quantity": "1"}, "quantity"),
        ({**RESERVE, "user_id": None}, "user_id"),
        ({**RESERVE, "at_ms": None}, "at_ms"),
        ({**RESERVE, "surprise": 1}, "surprise"),
        ({k: v for k, v in RESERVE.items() if k != "product_id"}, "product_id"),
        ({"type": "record_payment", "key": "k", "order_id": "o", "outcome": "PAID",
          "amount_minor": 1}, "outcome"),
        ({"type": "record_payment", "key": "k", "order_id": "o", "outcome": 1,
          "amount_minor": 1}, "outcome"),
        ({"type": "update_product", "key": "k", "product_id": "p", "clear_opens": 1},
         "clear_opens"),
        ({"type": "update_product", "key": "k", "product_id": "p", "price_minor": "9"},
         "price_minor"),
    ],
)
def test_decode_command_refuses_bad_wire_forms_naming_the_field(wire: Any, field: str) -> None:
    with pytest.raises(DecodeError) as raised:
        decode_command(wire)
    assert raised.value.field == field
    assert str(raised.value).startswith(field)
    assert isinstance(raised.value, ValueError)


def test_decode_command_accepts_optional_fields_as_null() -> None:
    command = decode_command({"type": "update_product", "key": "k", "product_id": "p",
                              "name": None, "per_user_limit": 3})
    assert command.per_user_limit == 3 and command.name is None  # type: ignore[union-attr]


def test_decode_result_checks_type_and_ok() -> None:
    good = encode_result(Rejected(reason=Reason.INVALID, message="m"))
    with pytest.raises(DecodeError, match=r"^ok"):
        decode_result({**good, "ok": True})
    with pytest.raises(DecodeError, match=r"^ok"):
        decode_result({k: v for k, v in good.items() if k != "ok"})
    with pytest.raises(DecodeError, match=r"^result"):
        decode_result("rejected")
    with pytest.raises(DecodeError, match=r"^reason"):
        decode_result({**good, "reason": "bored"})


def test_nested_records_and_lists_name_their_path() -> None:
    placed = {"type": "order_placed", "ok": True, "order_id": "o", "cart_id": "c", "user_id": "u",
              "amount_minor": 1, "currency": "USD", "pay_by_ms": 1,
              "lines": [{"product_id": "p", "quantity": "2", "unit_price_minor": 1,
                         "hold_id": "h"}]}
    with pytest.raises(DecodeError) as raised:
        decode_result(placed)
    assert raised.value.field == "lines[0].quantity"
    with pytest.raises(DecodeError, match=r"^lines: expected a list"):
        decode_result({**placed, "lines": "p"})
    with pytest.raises(DecodeError, match=r"^lines\[0\]: expected an object"):
        decode_result({**placed, "lines": [7]})


def test_event_data_must_be_plain_json() -> None:
    event = encode_event(Event(index=1, seq=0, at_ms=0, kind=decode_event_kind(), key=""))
    for bad, field in [
        ({"x": 1.5}, "data.x"),
        ({"x": [{1: 2}]}, "data.x[0]"),
        ([1], "data"),
    ]:
        with pytest.raises(DecodeError) as raised:
            decode_event({**event, "data": bad})
        assert raised.value.field == field
    deep: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(DecodeError, match="nested deeper"):
        decode_event({**event, "data": {"deep": deep}})


def decode_event_kind() -> Any:
    from ledger.events import EventKind

    return EventKind.SOLD_OUT


def test_encoders_refuse_what_is_not_a_record() -> None:
    with pytest.raises(TypeError):
        encode_view(object())  # type: ignore[arg-type]
    for unsupported in (float, int | str, list[int]):
        with pytest.raises(TypeError):
            _decoder_for(unsupported)
