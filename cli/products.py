"""``flashsale product ...``: build ledger commands from arguments, submit, print.

The command builders are pure (tested without a cluster). ``create`` derives its
idempotency key from the product's fields: running the same ``product add`` twice
creates the product once and answers the same both times. ``restock`` and ``update``
get a fresh key per invocation (restocking 10 units twice should add 20), reused by
the client's retries inside that invocation; ``--key`` makes any of them idempotent
across invocations.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from cli.failure import Failure
from cli.money import format_minor, to_minor
from cli.tables import render
from cli.when import format_ms
from cluster.client import ClusterClient
from ledger.limits import MAX_ID_LEN

SUBMIT_DEADLINE_S = 15.0  # a CLI user waits this long through an election


def derived_key(command: Mapping[str, Any]) -> str:
    """An idempotency key that is a function of the command's fields (``key`` excluded)."""
    fields = {k: v for k, v in command.items() if k != "key"}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return f"cli:{command['type']}:{digest[:32]}"


def fresh_key(kind: str) -> str:
    return f"cli:{kind}:{uuid.uuid4().hex}"


def check_key(key: str) -> str:
    if not 0 < len(key) <= MAX_ID_LEN:
        raise ValueError(f"key {key!r}: expected 1..{MAX_ID_LEN} characters")
    return key


def create_product_command(
    *,
    product_id: str,
    name: str,
    price: Decimal,
    currency: str,
    stock: int,
    per_user_limit: int | None = None,
    hold_s: int | None = None,
    opens_at_ms: int | None = None,
    closes_at_ms: int | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """The ``create_product`` command dict; ValueError naming the bad argument."""
    if opens_at_ms is not None and closes_at_ms is not None and closes_at_ms <= opens_at_ms:
        raise ValueError("--closes must be after --opens")
    command: dict[str, Any] = {
        "type": "create_product",
        "product_id": product_id,
        "name": name,
        "price_minor": to_minor(price, currency),
        "currency": currency,
        "total_stock": stock,
        "opens_at_ms": opens_at_ms,
        "closes_at_ms": closes_at_ms,
        "per_user_limit": per_user_limit,
    }
    if hold_s is not None:
        command["hold_ttl_ms"] = hold_s * 1000
    command["key"] = check_key(key) if key is not None else derived_key(command)
    return command


def update_product_command(
    *,
    product_id: str,
    currency: str,
    name: str | None = None,
    price: Decimal | None = None,
    per_user_limit: int | None = None,
    hold_s: int | None = None,
    opens_at_ms: int | None = None,
    closes_at_ms: int | None = None,
    always_open: bool = False,
    never_closes: bool = False,
    no_limit: bool = False,
    key: str | None = None,
) -> dict[str, Any]:
    """The ``update_product`` command dict; only the fields given change."""
    command: dict[str, Any] = {
        "type": "update_product",
        "key": check_key(key) if key is not None else fresh_key("update_product"),
        "product_id": product_id,
    }
    optional: dict[str, Any] = {
        "name": name,
        "price_minor": None if price is None else to_minor(price, currency),
        "per_user_limit": per_user_limit,
        "hold_ttl_ms": None if hold_s is None else hold_s * 1000,
        "opens_at_ms": opens_at_ms,
        "closes_at_ms": closes_at_ms,
    }
    command.update({k: v for k, v in optional.items() if v is not None})
    flags = {"clear_opens": always_open, "clear_closes": never_closes, "clear_limit": no_limit}
    command.update({k: True for k, v in flags.items() if v})
    if len(command) == 3:
        raise ValueError("nothing to update: give at least one field to change")
    return command


def restock_command(*, product_id: str, quantity: int, key: str | None = None) -> dict[str, Any]:
    """The ``restock`` command dict (a negative quantity withdraws available units)."""
    if quantity == 0:
        raise ValueError("--quantity 0 changes nothing")
    return {
        "type": "restock",
        "key": check_key(key) if key is not None else fresh_key("restock"),
        "product_id": product_id,
        "quantity": quantity,
    }


def describe(product: Mapping[str, Any]) -> str:
    """A product as a few human lines."""
    limit = product.get("per_user_limit")
    return "\n".join(
        [
            f"{product['product_id']}: {product['name']}",
            f"  price      {format_minor(product['price_minor'], product['currency'])}",
            f"  stock      {product['available']} available, {product['reserved']} reserved, "
            f"{product['sold']} sold of {product['total_stock']}",
            f"  per user   {'no limit' if limit is None else limit}",
            f"  hold       {product['hold_ttl_ms'] // 1000}s",
            f"  window     {format_ms(product.get('opens_at_ms'))} .. "
            f"{format_ms(product.get('closes_at_ms'))}",
        ]
    )


def table(products: Sequence[Mapping[str, Any]]) -> str:
    """Products as a table, one row each."""
    header = [
        "ID",
        "NAME",
        "PRICE",
        "AVAILABLE",
        "RESERVED",
        "SOLD",
        "TOTAL",
        "LIMIT",
        "OPENS",
        "CLOSES",
    ]
    rows = [
        [
            p["product_id"],
            p["name"],
            format_minor(p["price_minor"], p["currency"]),
            str(p["available"]),
            str(p["reserved"]),
            str(p["sold"]),
            str(p["total_stock"]),
            "-" if p.get("per_user_limit") is None else str(p["per_user_limit"]),
            format_ms(p.get("opens_at_ms")),
            format_ms(p.get("closes_at_ms")),
        ]
        for p in products
    ]
    return render(header, rows)


async def submit_one(client: ClusterClient, command: dict[str, Any]) -> dict[str, Any]:
    """Submit one command; its result when accepted, Failure naming the reason if not."""
    answer = await client.submit([command], deadline_s=SUBMIT_DEADLINE_S)
    result = answer.results[0]
    if not result.get("ok", False):
        reason, message = result.get("reason", "rejected"), result.get("message", "")
        raise Failure(f"refused ({reason}): {message}" if message else f"refused ({reason})")
    return result


async def current_currency(client: ClusterClient, product_id: str) -> str:
    """The currency a product is priced in (to convert a new price)."""
    found = await client.get(f"/v1/products/{quote(product_id, safe='')}")
    return str(found["product"]["currency"])
