"""Request bodies: read, size-capped, scanned for card numbers, then validated into records.

Theory of operation: ``read_json`` reads at most ``MAX_BODY_BYTES``, decodes strict
UTF-8 JSON (no NaN/Infinity), refuses anything that looks like a card number anywhere in
it (gateway.cards) before any other check can echo a value, and insists on an object.
The ``parse_*`` functions then check every field (type, range, size, charset) and refuse
unknown fields, raising ``Problem``s from gateway.problems that name the field. Values
are never echoed back in errors, except ids the shopper typed in the path.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from gateway.cards import contains_card_number, text_may_hold_card_number
from gateway.identity import MAX_USER_ID_LEN, valid_user_id
from gateway.problems import (
    Problem,
    body_timeout,
    body_too_large,
    card_number_refused,
    invalid_input,
    malformed_json,
)
from ledger.limits import MAX_ID_LEN, MAX_QUANTITY

MAX_BODY_BYTES = 16 * 1024
BODY_READ_TIMEOUT_S = 10.0  # a client trickling its body is cut off after this
MAX_PAYMENT_METHOD_LEN = 128
MAX_ADDRESS_LINE_LEN = 200
MAX_CITY_LEN = 100
MAX_REGION_LEN = 100
MAX_NAME_LEN = 200
MAX_POSTAL_CODE_LEN = 16
MAX_EMAIL_LEN = 254

PAYMENT_METHOD_PATTERN = re.compile(r"pm_[A-Za-z0-9_]+")
POSTAL_CODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 -]*")
COUNTRY_PATTERN = re.compile(r"[A-Z]{2}")  # ISO 3166-1 alpha-2
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# E.164 (what SMS providers take): a plus, no leading 0, at most 15 digits, no spaces.
PHONE_PATTERN = re.compile(r"\+[1-9][0-9]{6,14}")
MAX_PHONE_LEN = 16
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ReserveBody:
    """POST /add-to-cart and POST /reserve-inventory."""

    user_id: str
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class CheckoutBody:
    """POST /checkout. ``shipping_address`` is personal data: it leaves the gateway sealed."""

    user_id: str
    cart_id: str
    payment_method: str
    shipping_address: dict[str, str]
    email: str | None
    phone: str | None = None  # E.164; the notifier texts order notices to it


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every body (json.loads with an argument builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


async def read_json(
    request: web.Request, *, phone_fields: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The request's JSON object body, or a Problem (400/413/422). ``phone_fields``:
    see ``decode_json``."""
    return decode_json(await read_body(request), phone_fields=phone_fields)


async def read_body(request: web.Request) -> bytes:
    """The request's body bytes, at most ``MAX_BODY_BYTES`` (a Problem otherwise)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise body_too_large(MAX_BODY_BYTES)
    try:
        # The application's client_max_size is MAX_BODY_BYTES: read() stops beyond it.
        content = request.content
        if content.is_eof() and hdrs.CONTENT_ENCODING not in request.headers:
            # Already received whole (a small body comes with its headers): nothing to
            # wait for, so no timer to arm, and no read loop either (a third of the cost
            # of a sold-out refusal's body, docs/BENCHMARKS.md). Not for a compressed
            # body: read() is what stops one inflating past the size cap.
            raw = content.read_nowait()
        elif content.is_eof():
            raw = await request.read()
        else:
            async with asyncio.timeout(BODY_READ_TIMEOUT_S):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise body_too_large(MAX_BODY_BYTES) from None
    except TimeoutError:
        raise body_timeout(BODY_READ_TIMEOUT_S) from None
    if len(raw) > MAX_BODY_BYTES:
        raise body_too_large(MAX_BODY_BYTES)
    return raw


def _without_phones(value: object, phone_fields: frozenset[str]) -> object:
    # A 13..15-digit E.164 number can pass the Luhn check; in a top-level phone field, as
    # exactly "+digits", it is taken for the phone number it is rather than a card.
    if not phone_fields or not isinstance(value, dict):
        return value
    return {
        k: v
        for k, v in value.items()
        if not (k in phone_fields and isinstance(v, str) and PHONE_PATTERN.fullmatch(v))
    }


def decode_json(raw: bytes, *, phone_fields: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Decode a request body (already size-checked) into a JSON object. Top-level fields
    named in ``phone_fields`` holding an E.164 number are not scanned for card numbers."""
    if not raw.strip():
        raise malformed_json("the request body is empty; expected a JSON object")
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise malformed_json("the request body is not UTF-8") from None
    except RecursionError:
        raise malformed_json("the JSON body is nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError's message holds a position, never the text around it.
        raise malformed_json(f"invalid JSON: {exc}") from None
    if text_may_hold_card_number(raw) and contains_card_number(
        _without_phones(value, phone_fields)
    ):
        raise card_number_refused()
    if not isinstance(value, dict):
        raise invalid_input("the body must be a JSON object")
    return value


def _check_fields(body: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise invalid_input(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    missing = sorted(required - set(body))
    if missing:
        raise invalid_input(f"missing field(s): {', '.join(missing)}", field=missing[0])


def _text(
    body: Mapping[str, Any],
    name: str,
    max_len: int,
    *,
    pattern: re.Pattern[str] | None = None,
    what: str = "",
    min_len: int = 1,
) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise invalid_input(f"{name} must be a string", field=name)
    if not min_len <= len(value) <= max_len:
        raise invalid_input(f"{name} must be {min_len}..{max_len} characters", field=name)
    if _CONTROL.search(value):
        raise invalid_input(f"{name} must not contain control characters", field=name)
    if pattern is not None and value and pattern.fullmatch(value) is None:
        raise invalid_input(f"{name} must be {what}", field=name)
    return value


def parse_id(value: str, name: str) -> str:
    """An id from a path segment or body field (product, cart, hold, order)."""
    # The ledger's own rule for ids (printable, no whitespace), minus the two ids that
    # would be path steps rather than names in a node URL.
    if (
        not 1 <= len(value) <= MAX_ID_LEN
        or not value.isprintable()
        or " " in value
        or value in (".", "..")
    ):
        raise invalid_input(
            f"{name} must be 1..{MAX_ID_LEN} printable characters without spaces",
            field=name,
        )
    return value


def _user_id(body: Mapping[str, Any]) -> str:
    value = body.get("user_id")
    if not isinstance(value, str) or not valid_user_id(value):
        raise invalid_input(
            f"user_id must be 1..{MAX_USER_ID_LEN} letters, digits or ._@+- characters",
            field="user_id",
        )
    return value


def _id_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise invalid_input(f"{name} must be a string", field=name)
    return parse_id(value, name)


_RESERVE_FIELDS = frozenset({"user_id", "product_id", "quantity"})


# Hold bodies already validated, by their bytes. After a sell-out the same shoppers (and
# bots) send the same hold again and again, byte for byte, and decoding, scanning and
# checking it was most of the cost of the refusal (docs/BENCHMARKS.md). Only bodies of
# a hold's size are kept (at most this many, least recently used dropped first), so the
# cache holds well under a few MB; a body that fails is never kept (it raises).
RESERVE_BODY_CACHE_SIZE = 4096
MAX_CACHED_BODY_BYTES = 256


def reserve_body(raw: bytes) -> ReserveBody:
    """``parse_reserve(decode_json(raw))``, remembered for small bodies."""
    if len(raw) <= MAX_CACHED_BODY_BYTES:
        return _cached_reserve_body(raw)
    return parse_reserve(decode_json(raw))


@functools.lru_cache(maxsize=RESERVE_BODY_CACHE_SIZE)
def _cached_reserve_body(raw: bytes) -> ReserveBody:
    return parse_reserve(decode_json(raw))


def parse_reserve(body: Mapping[str, Any]) -> ReserveBody:
    """Validate ``{user_id, product_id, quantity}``."""
    if body.keys() != _RESERVE_FIELDS:  # the sets' arithmetic only to say what is wrong
        _check_fields(body, set(_RESERVE_FIELDS), set())
    quantity = body["quantity"]
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise invalid_input("quantity must be an integer", field="quantity")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise invalid_input(f"quantity must be 1..{MAX_QUANTITY}", field="quantity")
    return ReserveBody(_user_id(body), _id_field(body, "product_id"), quantity)


_ADDRESS_REQUIRED = {"address_line1", "city", "postal_code", "country"}
_ADDRESS_OPTIONAL = {"address_line2", "region", "name"}


def parse_address(value: object) -> dict[str, str]:
    """Validate a shipping address; the country comes back upper-cased."""
    if not isinstance(value, dict):
        raise invalid_input("shipping_address must be an object", field="shipping_address")
    unknown = sorted(set(value) - _ADDRESS_REQUIRED - _ADDRESS_OPTIONAL)
    if unknown:
        raise invalid_input(
            f"unknown field(s) in shipping_address: {', '.join(unknown)}",
            field=f"shipping_address.{unknown[0]}",
        )
    missing = sorted(_ADDRESS_REQUIRED - set(value))
    if missing:
        raise invalid_input(
            f"missing field(s) in shipping_address: {', '.join(missing)}",
            field=f"shipping_address.{missing[0]}",
        )
    country = value.get("country")
    upper = dict(value, country=country.upper() if isinstance(country, str) else country)
    try:
        address = {
            "address_line1": _text(upper, "address_line1", MAX_ADDRESS_LINE_LEN),
            "city": _text(upper, "city", MAX_CITY_LEN),
            "postal_code": _text(
                upper,
                "postal_code",
                MAX_POSTAL_CODE_LEN,
                pattern=POSTAL_CODE_PATTERN,
                what="letters, digits, spaces or dashes",
            ),
            "country": _text(
                upper, "country", 2, pattern=COUNTRY_PATTERN, what="an ISO 3166-1 alpha-2 code"
            ),
        }
        for name, max_len in (
            ("address_line2", MAX_ADDRESS_LINE_LEN),
            ("region", MAX_REGION_LEN),
            ("name", MAX_NAME_LEN),
        ):
            if name in upper:
                address[name] = _text(upper, name, max_len, min_len=0)
    except Problem as exc:
        field = exc.extensions.get("field")
        exc.extensions["field"] = f"shipping_address.{field}"
        exc.detail = f"shipping_address.{exc.detail}"
        raise
    return address


def parse_checkout(body: Mapping[str, Any]) -> CheckoutBody:
    """Validate ``{user_id, cart_id, payment_method, shipping_address, [email], [phone]}``."""
    _check_fields(
        body, {"user_id", "cart_id", "payment_method", "shipping_address"}, {"email", "phone"}
    )
    payment_method = _text(
        body,
        "payment_method",
        MAX_PAYMENT_METHOD_LEN,
        pattern=PAYMENT_METHOD_PATTERN,
        what="a payment method token from your payment provider (pm_...)",
    )
    email = None
    if body.get("email") is not None:
        email = _text(
            body, "email", MAX_EMAIL_LEN, pattern=EMAIL_PATTERN, what="an email address"
        )
    return CheckoutBody(
        user_id=_user_id(body),
        cart_id=_id_field(body, "cart_id"),
        payment_method=payment_method,
        shipping_address=parse_address(body["shipping_address"]),
        email=email,
        phone=parse_phone(body),
    )


def parse_phone(body: Mapping[str, Any]) -> str | None:
    """The optional ``phone`` field: an E.164 number (``+15550001234``) or None."""
    if body.get("phone") is None:
        return None
    return _text(
        body,
        "phone",
        MAX_PHONE_LEN,
        pattern=PHONE_PATTERN,
        what="an E.164 phone number (+ and country code, digits only: +15550001234)",
    )
