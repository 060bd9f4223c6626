"""Field checks shared by the command handlers.

Each check returns a message naming the bad field (the text of a ``Rejected(INVALID)``)
or None when the value is fine. Handlers run every check before they change anything,
so a refused command leaves no trace but its result. Types are checked too: commands
built in Python (not decoded by ``ledger.codec``) may carry anything.
"""

from __future__ import annotations

from ledger.limits import (
    MAX_ID_LEN,
    MAX_NAME_LEN,
    MAX_PRICE_MINOR,
    MAX_STOCK,
    MAX_TEXT_LEN,
    MAX_TTL_MS,
)
from ledger.settings import MIN_TTL_MS

CURRENCY_LEN = 3  # ISO 4217 alphabetic code
MAX_TIME_MS = 2**53 - 1  # largest time every JSON reader holds exactly
MAX_AMOUNT_MINOR = 2**63 - 1  # a payment amount, in minor units


def id_problem(field: str, value: object) -> str | None:
    """Ids (products, users, holds, carts, orders): 1..MAX_ID_LEN printable, no spaces."""
    if type(value) is not str:
        return f"{field} must be a string"
    if not 0 < len(value) <= MAX_ID_LEN:
        return f"{field} must have 1..{MAX_ID_LEN} characters"
    # isprintable() is False for every whitespace character except the plain space.
    if not value.isprintable() or " " in value:
        return f"{field} must be printable and contain no whitespace"
    return None


def is_id(value: object) -> bool:
    """Whether ``id_problem`` finds nothing wrong (the fast yes/no of the hot path)."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LEN
        and value.isprintable()
        and " " not in value
    )


def int_problem(field: str, value: object, low: int, high: int) -> str | None:
    if type(value) is not int or not low <= value <= high:
        return f"{field} must be an integer in {low}..{high}, got {value!r}"
    return None


def optional_int_problem(field: str, value: object, low: int, high: int) -> str | None:
    return None if value is None else int_problem(field, value, low, high)


def text_problem(field: str, value: object, max_len: int = MAX_TEXT_LEN) -> str | None:
    if type(value) is not str or len(value) > max_len:
        return f"{field} must be a string of at most {max_len} characters"
    return None


def name_problem(value: object) -> str | None:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME_LEN:
        return f"name must be a string of 1..{MAX_NAME_LEN} characters"
    return None


def price_problem(value: object) -> str | None:
    return int_problem("price_minor", value, 0, MAX_PRICE_MINOR)


def currency_problem(value: object) -> str | None:
    if (
        type(value) is not str
        or len(value) != CURRENCY_LEN
        or not (value.isascii() and value.isalpha() and value.isupper())
    ):
        return f"currency must be {CURRENCY_LEN} uppercase letters, got {value!r}"
    return None


def stock_problem(value: object) -> str | None:
    return int_problem("total_stock", value, 0, MAX_STOCK)


def limit_problem(value: object) -> str | None:
    return optional_int_problem("per_user_limit", value, 1, MAX_STOCK)


def hold_ttl_problem(value: object) -> str | None:
    return int_problem("hold_ttl_ms", value, MIN_TTL_MS, MAX_TTL_MS)


def time_problem(field: str, value: object) -> str | None:
    return optional_int_problem(field, value, 0, MAX_TIME_MS)


def window_problem(opens_at_ms: int | None, closes_at_ms: int | None) -> str | None:
    if opens_at_ms is not None and closes_at_ms is not None and opens_at_ms >= closes_at_ms:
        return f"opens_at_ms ({opens_at_ms}) must be before closes_at_ms ({closes_at_ms})"
    return None
