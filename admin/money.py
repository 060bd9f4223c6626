"""Prices as operators type them ("19.99") to and from integer minor units (1999).

Exact decimal arithmetic only: a price with more decimals than its currency has is
refused rather than rounded, so what the operator typed is what shoppers pay.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ledger.limits import MAX_PRICE_MINOR

# ISO 4217 minor-unit exponents that differ from 2.
_EXPONENTS = {
    "BHD": 3, "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "IQD": 3, "ISK": 0, "JOD": 3,
    "JPY": 0, "KMF": 0, "KRW": 0, "KWD": 3, "LYD": 3, "OMR": 3, "PYG": 0, "RWF": 0,
    "TND": 3, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
}  # fmt: skip
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_PRICE = re.compile(r"^[0-9]+(\.[0-9]+)?$")


class MoneyError(ValueError):
    """A price or currency cannot be used; the message shows the offending text."""


def check_currency(currency: str) -> str:
    code = currency.strip().upper()
    if not _CURRENCY.match(code):
        raise MoneyError(f"currency {currency!r}: expected a three-letter ISO 4217 code")
    return code


def exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit (2 for USD and EUR, 0 for JPY)."""
    return _EXPONENTS.get(check_currency(currency), 2)


def to_minor(price: str, currency: str) -> int:
    """``"19.99", "USD"`` -> ``1999``; MoneyError for anything not exactly representable."""
    text = price.strip()  # no separators: "19,99" could mean 19.99 or 1999
    if not _PRICE.match(text):
        raise MoneyError(f"price {price!r}: expected a non-negative decimal such as 19.99")
    places = exponent(currency)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise MoneyError(f"price {price!r}: not a decimal number") from None
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"price {price!r}: {check_currency(currency)} has {places} decimal places")
    minor = int(scaled)
    if minor > MAX_PRICE_MINOR:
        raise MoneyError(f"price {price!r}: above the limit of {MAX_PRICE_MINOR} minor units")
    return minor


def from_minor(minor: int, currency: str) -> str:
    """``1999, "USD"`` -> ``"19.99"`` (exact; the inverse of ``to_minor``)."""
    places = exponent(currency)
    if places == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**places)
    return f"{sign}{whole}.{frac:0{places}d}"
