"""Prices typed by people (``19.99``) to integer minor units (``1999``) and back, exactly.

Decimal all the way: a price that does not fit the currency's minor unit (``19.999``
dollars) is refused, never rounded. The exponent of each currency is ISO 4217's.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ledger.limits import MAX_PRICE_MINOR

DEFAULT_EXPONENT = 2
# ISO 4217 currencies whose minor unit is not a hundredth.
CURRENCY_EXPONENTS: dict[str, int] = {
    **{code: 0 for code in ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG")},
    **{code: 0 for code in ("RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF")},
    **{code: 3 for code in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")},
    **{code: 4 for code in ("CLF", "UYW")},
}
_CURRENCY = re.compile(r"[A-Z]{3}")


def parse_currency(text: str) -> str:
    """An ISO 4217 code such as ``USD`` (case-insensitive in, upper case out)."""
    code = text.strip().upper()
    if not _CURRENCY.fullmatch(code):
        raise ValueError(f"currency {text!r}: expected a 3-letter ISO 4217 code like USD")
    return code


def exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit (2 for USD, 0 for JPY)."""
    return CURRENCY_EXPONENTS.get(currency, DEFAULT_EXPONENT)


def parse_price(text: str) -> Decimal:
    """A non-negative decimal amount as typed (``19.99``); no floats, no exponents."""
    if not re.fullmatch(r"\d+(\.\d+)?", text.strip()):
        raise ValueError(f"price {text!r}: expected a decimal amount like 19.99")
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"price {text!r}: expected a decimal amount like 19.99") from None


def to_minor(amount: Decimal, currency: str) -> int:
    """``amount`` in the currency's minor units; ValueError if it needs finer ones."""
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"price {amount}: {currency} has {exponent(currency)} decimal places")
    minor = int(scaled)
    if not 0 <= minor <= MAX_PRICE_MINOR:
        raise ValueError(f"price {amount}: must be between 0 and {MAX_PRICE_MINOR} minor units")
    return minor


def format_minor(minor: int, currency: str) -> str:
    """``1999, "USD"`` -> ``"19.99 USD"``."""
    places = exponent(currency)
    amount = Decimal(minor).scaleb(-places)
    return f"{amount:.{places}f} {currency}"
