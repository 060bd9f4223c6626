"""GDPR: a shopper's data as JSON (export), and the destruction of their personal data
(erasure by crypto-shredding, see ``pii.keystore``).

The export reads the order store (``snapshots``): it is as current as the snapshot
writer, and says so (``as_of_ledger_index``). Personal details are opened with the
shopper's data key; after an erasure each order says ``erased`` with the time, and the
rest of the order (amounts, products, statuses) stays, as accounting needs it.
"""

from __future__ import annotations

from typing import Any

from pii.errors import KeyErased, PiiError
from pii.keystore import Erasure, KeyStore
from pii.sealing import Unsealer
from snapshots.database import Database

_ORDER_COLUMNS = (
    "order_id",
    "cart_id",
    "order_status",
    "payment_status",
    "amount_minor",
    "currency",
    "payment_method",
    "failure",
    "created_at_ms",
    "pay_by_ms",
    "updated_at_ms",
    "pii_sealed",
    "ledger_index",
)
_LINE_COLUMNS = ("order_id", "line_no", "product_id", "quantity", "unit_price_minor", "hold_id")
_CART_COLUMNS = (
    "hold_id",
    "cart_id",
    "product_id",
    "quantity",
    "cart_expiry_ms",
    "status",
    "order_id",
    "created_at_ms",
    "updated_at_ms",
)
_PAYMENT_COLUMNS = (
    "payment_id",
    "order_id",
    "payment_method",
    "provider",
    "transaction_id",
    "amount_minor",
    "currency",
    "payment_status",
    "declined_attempts",
    "failure",
    "created_at_ms",
    "updated_at_ms",
)


def _rows(
    db: Database,
    table: str,
    columns: tuple[str, ...],
    where: str,
    params: tuple[Any, ...],
    order: str,
) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {where} ORDER BY {order}"
    return [dict(zip(columns, row, strict=True)) for row in db.query(sql, params)]


def personal_details(unsealer: Unsealer, sealed: str | None) -> dict[str, Any]:
    """What an export shows of one sealed value: the details, or why there are none."""
    if not sealed:
        return {"status": "none"}
    try:
        return {"status": "present", "details": unsealer.unseal(sealed).details}
    except KeyErased as exc:
        return {"status": "erased", "erased_at_ms": exc.erased_at_ms}
    except PiiError as exc:
        return {"status": "unreadable", "reason": str(exc)}


def export_user(db: Database, keys: KeyStore, user_id: str) -> dict[str, Any]:
    """Everything the order store holds about ``user_id``, personal details opened."""
    unsealer = Unsealer(keys)
    orders = _rows(
        db, "orders", _ORDER_COLUMNS, "user_id = ?", (user_id,), "created_at_ms, order_id"
    )
    lines = _rows(
        db,
        "order_lines",
        _LINE_COLUMNS,
        "order_id IN (SELECT order_id FROM orders WHERE user_id = ?)",
        (user_id,),
        "order_id, line_no",
    )
    by_order: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_order.setdefault(str(line.pop("order_id")), []).append(line)
    for order in orders:
        order["lines"] = by_order.get(str(order["order_id"]), [])
        order["personal_details"] = personal_details(unsealer, order.pop("pii_sealed"))
    key = db.query(
        "SELECT key_id, master_key_id, created_at_ms FROM data_keys WHERE user_id = ?",
        (user_id,),
    )
    applied = db.query("SELECT ledger_index, at_ms FROM applied_index WHERE id = 1")
    return {
        "user_id": user_id,
        "as_of_ledger_index": int(applied[0][0]),
        "as_of_ledger_ms": int(applied[0][1]),
        "data_key": (
            None
            if not key
            else {"key_id": key[0][0], "master_key_id": key[0][1], "created_at_ms": key[0][2]}
        ),
        "erasures": [
            {"key_id": key_id, "erased_at_ms": at} for key_id, at in keys.erasures(user_id)
        ],
        "orders": orders,
        "cart": _rows(
            db, "cart", _CART_COLUMNS, "user_id = ?", (user_id,), "created_at_ms, hold_id"
        ),
        "payments": _rows(
            db, "payment", _PAYMENT_COLUMNS, "user_id = ?", (user_id,), "created_at_ms, payment_id"
        ),
    }


def erase_user(keys: KeyStore, user_id: str) -> dict[str, Any]:
    """Destroy the shopper's data key; what was erased."""
    erasure: Erasure = keys.erase(user_id)
    kept = keys.db.query("SELECT COUNT(*) FROM orders WHERE user_id = ?", (user_id,))
    return {
        "user_id": erasure.user_id,
        "erased_at_ms": erasure.erased_at_ms,
        "destroyed_key_ids": list(erasure.key_ids),
        "orders_kept_without_personal_data": int(kept[0][0]),
    }
