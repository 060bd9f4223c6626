"""Product forms as operators fill them in, turned into ledger command dicts.

Theory of operation (pure functions): each function reads the text fields of one form,
checks them against the ledger's limits, and returns the wire form of one command
(``ledger.codec`` dicts: fields by name plus ``"type"``) or raises ``FormError`` naming
the field. Prices are decimals converted exactly to minor units (admin.money); times
are ``datetime-local`` values read as UTC; the hold TTL is typed in seconds. The
idempotency key comes with the form (a hidden field minted when the page was drawn),
so submitting the same form twice asks the ledger for the same change once.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from admin.money import check_currency, to_minor
from ledger.limits import MAX_ID_LEN, MAX_NAME_LEN, MAX_STOCK, MAX_TTL_MS

KEY_PREFIX = "admin-"
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ID = re.compile(r"^[A-Za-z0-9._-]+$")

Form = Mapping[str, str]
CommandDict = dict[str, Any]


class FormError(ValueError):
    """A form field is unusable; ``field`` names it for the page to highlight."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def new_key() -> str:
    """A fresh idempotency key for one form as drawn."""
    return KEY_PREFIX + secrets.token_urlsafe(18)


def form_key(form: Form) -> str:
    key = form.get("key", "").strip()
    if not key:
        return new_key()
    if len(key) > MAX_ID_LEN or not _KEY.match(key):
        raise FormError("key", "malformed idempotency key; reload the page")
    return key


def _text(form: Form, field: str) -> str:
    return form.get(field, "").strip()


def product_id(text: str, field: str = "product_id") -> str:
    if not text or len(text) > MAX_ID_LEN or not _ID.match(text):
        raise FormError(
            field, f"expected 1..{MAX_ID_LEN} characters of letters, digits, '.', '_' or '-'"
        )
    return text


def _name(form: Form) -> str:
    name = _text(form, "name")
    if not name or len(name) > MAX_NAME_LEN:
        raise FormError("name", f"expected 1..{MAX_NAME_LEN} characters")
    return name


def _int(form: Form, field: str, lo: int, hi: int) -> int:
    text = _text(form, field)
    try:
        value = int(text)
    except ValueError:
        raise FormError(field, f"{text!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise FormError(field, f"{value} is outside {lo}..{hi}")
    return value


def _optional_int(form: Form, field: str, lo: int, hi: int) -> int | None:
    return None if not _text(form, field) else _int(form, field, lo, hi)


def when_ms(form: Form, field: str) -> int | None:
    """A ``datetime-local`` field (UTC) in ms since the epoch; None when blank."""
    text = _text(form, field)
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            moment = datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        return int(moment.timestamp() * 1000)
    raise FormError(field, f"{text!r}: expected a UTC time like 2025-11-25T12:00")


def _window(form: Form) -> tuple[int | None, int | None]:
    opens, closes = when_ms(form, "opens_at"), when_ms(form, "closes_at")
    if opens is not None and closes is not None and closes <= opens:
        raise FormError("closes_at", "the sale must close after it opens")
    return opens, closes


def _hold_ttl_ms(form: Form) -> int:
    return _int(form, "hold_ttl_s", 1, MAX_TTL_MS // 1000) * 1000


def create_command(form: Form) -> CommandDict:
    """``create_product`` from the new-product form."""
    currency = _currency(form)
    opens, closes = _window(form)
    return {
        "type": "create_product",
        "key": form_key(form),
        "product_id": product_id(_text(form, "product_id")),
        "name": _name(form),
        "price_minor": _price(form, currency),
        "currency": currency,
        "total_stock": _int(form, "total_stock", 0, MAX_STOCK),
        "opens_at_ms": opens,
        "closes_at_ms": closes,
        "per_user_limit": _optional_int(form, "per_user_limit", 1, MAX_STOCK),
        "hold_ttl_ms": _hold_ttl_ms(form),
    }


def update_command(form: Form, pid: str, currency: str) -> CommandDict:
    """``update_product`` from the edit form: every field is set as shown; a blank
    window end or limit clears it (open now / never closes / no limit)."""
    opens, closes = _window(form)
    limit = _optional_int(form, "per_user_limit", 1, MAX_STOCK)
    return {
        "type": "update_product",
        "key": form_key(form),
        "product_id": product_id(pid),
        "name": _name(form),
        "price_minor": _price(form, currency),
        "opens_at_ms": opens,
        "closes_at_ms": closes,
        "per_user_limit": limit,
        "hold_ttl_ms": _hold_ttl_ms(form),
        "clear_opens": opens is None,
        "clear_closes": closes is None,
        "clear_limit": limit is None,
    }


def restock_command(form: Form, pid: str) -> CommandDict:
    """``restock``: a positive quantity adds units, a negative one withdraws available units."""
    quantity = _int(form, "quantity", -MAX_STOCK, MAX_STOCK)
    if quantity == 0:
        raise FormError("quantity", "0 changes nothing")
    return {
        "type": "restock",
        "key": form_key(form),
        "product_id": product_id(pid),
        "quantity": quantity,
    }


def open_command(form: Form, pid: str) -> CommandDict:
    """Open the sale now: no start time, no end time."""
    return {
        "type": "update_product",
        "key": form_key(form),
        "product_id": product_id(pid),
        "clear_opens": True,
        "clear_closes": True,
    }


def close_command(form: Form, pid: str, now_ms: int) -> CommandDict:
    """Close the sale now (the window ends at the console's clock)."""
    return {
        "type": "update_product",
        "key": form_key(form),
        "product_id": product_id(pid),
        "closes_at_ms": now_ms,
    }


def _currency(form: Form) -> str:
    try:
        return check_currency(_text(form, "currency") or "USD")
    except ValueError as exc:
        raise FormError("currency", str(exc)) from None


def _price(form: Form, currency: str) -> int:
    try:
        return to_minor(_text(form, "price"), currency)
    except ValueError as exc:
        raise FormError("price", str(exc)) from None
