"""Amounts between the decimal text providers and shoppers use and integer minor units.

Exact (Decimal), never rounded: ``"19.99" USD`` is 1999, ``"19.999" USD`` is refused.
Currency exponents are ISO 4217's (cli.money holds the table).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from cli.money import exponent

MAX_AMOUNT_TEXT_LEN = 32  # "amount" values longer than this are refused unread
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def to_minor(amount: Decimal, currency: str) -> int:
    """``amount`` in minor units; ValueError if it has finer digits than the currency."""
    if not amount.is_finite():
        raise ValueError("amount must be a finite number")
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{currency} amounts have {exponent(currency)} decimal places")
    return int(scaled)


def from_minor(amount_minor: int, currency: str) -> str:
    """``1999, "USD"`` -> ``"19.99"``."""
    places = exponent(currency)
    return f"{Decimal(amount_minor).scaleb(-places):.{places}f}"


def parse_amount(value: object) -> Decimal:
    """A JSON amount (a decimal string, or a number) as an exact Decimal.

    A JSON number arrives as a float; its shortest repr is the text the client wrote for
    any amount with fewer than 16 significant digits, so no cent is lost.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("amount must be a decimal string or a number")
    text = value if isinstance(value, str) else repr(value)
    if len(text) > MAX_AMOUNT_TEXT_LEN:
        raise ValueError(f"amount must be at most {MAX_AMOUNT_TEXT_LEN} characters")
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        # No exponents, signs, NaN or Infinity: an amount is written as people write one.
        raise ValueError("amount must be a non-negative decimal number like 19.99")
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError("amount must be a decimal number like 19.99") from None
