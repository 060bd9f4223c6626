"""The public shapes of the shopper API, built from ledger results and views.

Pure functions. Times go out as RFC 3339 UTC strings (with the ``*_ms`` integers beside
them), money as decimal strings in major units (with ``*_minor`` integers beside them),
and nothing personal leaves in a read (an order's sealed details stay inside).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# ISO 4217 currencies whose minor unit is not a hundredth.
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3}

# The public API names ledger payment states as the specification does.
_PAYMENT_STATUS = {"pending": "pending", "paid": "completed", "failed": "failed"}


@functools.lru_cache(maxsize=1024)  # a batch's holds share one expiry: formatted once
def rfc3339(ms: int) -> str:
    """``1700000000123`` -> ``"2023-11-14T22:13:20.123Z"``."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def money(amount_minor: int, currency: str) -> str:
    """``1999, "USD"`` -> ``"19.99"``; exact (Decimal), never a float."""
    digits = _MINOR_DIGITS.get(currency.upper(), 2)
    return str(Decimal(amount_minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits)))


def _opt_time(ms: object) -> str | None:
    return rfc3339(ms) if isinstance(ms, int) else None


def product(p: Mapping[str, Any]) -> dict[str, Any]:
    """A product as shoppers see it (terms and live stock)."""
    currency = str(p.get("currency", "USD"))
    price_minor = p.get("price_minor")
    out: dict[str, Any] = {
        "product_id": p.get("product_id"),
        "name": p.get("name"),
        "price": money(price_minor, currency) if isinstance(price_minor, int) else None,
        "price_minor": price_minor,
        "currency": currency,
        "available_quantity": p.get("available"),
        "total_stock": p.get("total_stock"),
        "opens_at": _opt_time(p.get("opens_at_ms")),
        "opens_at_ms": p.get("opens_at_ms"),
        "closes_at": _opt_time(p.get("closes_at_ms")),
        "closes_at_ms": p.get("closes_at_ms"),
        "per_user_limit": p.get("per_user_limit"),
        "hold_ttl_ms": p.get("hold_ttl_ms"),
    }
    return out


def inventory(p: Mapping[str, Any], index: int) -> dict[str, Any]:
    """``GET /inventory/{product_id}``."""
    return {
        "product_id": p.get("product_id"),
        "available_quantity": p.get("available"),
        "total_stock": p.get("total_stock"),
        "reserved_quantity": p.get("reserved"),
        "sold_quantity": p.get("sold"),
        "ledger_index": index,
    }


def hold_placed(result: Mapping[str, Any], index: int) -> dict[str, Any]:
    """``POST /add-to-cart`` and ``POST /reserve-inventory`` on success."""
    expires_at_ms = int(result["expires_at_ms"])
    return {
        "success": True,
        "cart_id": result["cart_id"],
        "hold_id": result["hold_id"],
        "product_id": result["product_id"],
        "quantity": result["quantity"],
        "reservation_expiry": rfc3339(expires_at_ms),
        "expires_at_ms": expires_at_ms,
        "ledger_index": index,
    }


def hold(h: Mapping[str, Any]) -> dict[str, Any]:
    """One hold inside a cart."""
    expires_at_ms = h.get("expires_at_ms")
    return {
        "hold_id": h.get("hold_id"),
        "product_id": h.get("product_id"),
        "quantity": h.get("quantity"),
        "status": h.get("status"),
        "reservation_expiry": _opt_time(expires_at_ms),
        "expires_at_ms": expires_at_ms,
    }


def cart(c: Mapping[str, Any], holds: Sequence[Mapping[str, Any]], index: int) -> dict[str, Any]:
    """``GET /cart/{cart_id}``."""
    return {
        "cart_id": c.get("cart_id"),
        "user_id": c.get("user_id"),
        "status": c.get("status"),
        "order_id": c.get("order_id"),
        "items": [hold(h) for h in holds],
        "ledger_index": index,
    }


def hold_released(result: Mapping[str, Any], cart_id: str, index: int) -> dict[str, Any]:
    """``DELETE /cart/{cart_id}/items/{hold_id}`` on success."""
    return {
        "success": True,
        "cart_id": cart_id,
        "hold_id": result["hold_id"],
        "product_id": result["product_id"],
        "quantity": result["quantity"],
        "ledger_index": index,
    }


def _lines(lines: object, currency: str) -> list[dict[str, Any]]:
    out = []
    for line in lines if isinstance(lines, list) else []:
        if not isinstance(line, dict):
            continue
        unit = line.get("unit_price_minor")
        out.append(
            {
                "product_id": line.get("product_id"),
                "quantity": line.get("quantity"),
                "hold_id": line.get("hold_id"),
                "unit_price": money(unit, currency) if isinstance(unit, int) else None,
                "unit_price_minor": unit,
            }
        )
    return out


def order_placed(result: Mapping[str, Any], index: int) -> dict[str, Any]:
    """``POST /checkout`` on success: the order waits for payment until ``pay_by``."""
    currency = str(result.get("currency", "USD"))
    amount_minor = int(result["amount_minor"])
    pay_by_ms = int(result["pay_by_ms"])
    return {
        "order_id": result["order_id"],
        "cart_id": result.get("cart_id"),
        "payment_status": "pending",
        "inventory_status": "confirmed",
        "amount": money(amount_minor, currency),
        "amount_minor": amount_minor,
        "currency": currency,
        "pay_by": rfc3339(pay_by_ms),
        "pay_by_ms": pay_by_ms,
        "lines": _lines(result.get("lines"), currency),
        "ledger_index": index,
    }


def order(o: Mapping[str, Any], index: int) -> dict[str, Any]:
    """``GET /orders/{order_id}`` (no personal details)."""
    currency = str(o.get("currency", "USD"))
    amount_minor = o.get("amount_minor")
    status = o.get("status")
    return {
        "order_id": o.get("order_id"),
        "cart_id": o.get("cart_id"),
        "user_id": o.get("user_id"),
        "status": status,
        "payment_status": _PAYMENT_STATUS.get(str(o.get("payment_status")), "pending"),
        # Units stay reserved for a pending order and sold for a completed one; a failed
        # order gave them back.
        "inventory_status": "failed" if status == "failed" else "confirmed",
        "amount": money(amount_minor, currency) if isinstance(amount_minor, int) else None,
        "amount_minor": amount_minor,
        "currency": currency,
        "lines": _lines(o.get("lines"), currency),
        "created_at": _opt_time(o.get("created_at_ms")),
        "created_at_ms": o.get("created_at_ms"),
        "pay_by": _opt_time(o.get("pay_by_ms")),
        "pay_by_ms": o.get("pay_by_ms"),
        "payment_method": o.get("payment_method"),
        "transaction_id": o.get("transaction_id") or None,
        "payment_attempts": o.get("payment_attempts"),
        "failure": o.get("failure") or None,
        "ledger_index": index,
    }
