"""A seeded flash sale applied to an in-process ledger (``LedgerFeed``): the events the
writer's benchmark and tests feed it. The same seed gives the same sale, event for event.

Each entry (one "Raft entry") holds a mix of what shoppers do: reserve (often refused
once stock runs out), release, check out (with sealed personal details when a ``seal``
function is given), pay (paid, declined or failed), with the occasional restock and
price change. Time moves forward between entries, so holds and unpaid orders expire.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ledger import HoldPlaced, OrderPlaced, Settings
from snapshots.ledger_feed import LedgerFeed

Seal = Callable[[str, Mapping[str, object]], str]
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SALE_SETTINGS = Settings(payment_ttl_ms=20_000, retention_ms=3_600_000)
HOLD_TTL_MS = 15_000


def shipping_details(user_id: str) -> dict[str, object]:
    """Personal details of a simulated shopper (distinctive text, easy to search for)."""
    n = int(user_id.removeprefix("shopper-")) if user_id.startswith("shopper-") else 0
    return {
        "shipping_address": {
            "address_line1": f"{n} Rue Secrète",
            "city": "Lyon",
            "postal_code": f"69{n:03d}",
            "country": "FR",
        },
        "email": f"{user_id}@private.example",
        "phone": f"+33 6 12 34 {n % 100:02d} {n // 100 % 100:02d}",
    }


@dataclass
class Sale:
    """The running sale's bookkeeping (what a shopper could do next)."""

    feed: LedgerFeed
    rnd: random.Random
    seal: Seal | None
    products: list[str] = field(default_factory=list)
    holds: dict[str, str] = field(default_factory=dict)  # hold id -> user
    carts: dict[str, str] = field(default_factory=dict)  # user -> open cart id
    orders: dict[str, int] = field(default_factory=dict)  # pending order id -> amount
    now_ms: int = START_MS
    keys: int = 0

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"


def _command(sale: Sale, shoppers: int) -> dict[str, object]:
    rnd = sale.rnd
    roll = rnd.random()
    user = f"shopper-{rnd.randrange(shoppers)}"
    # What the shopper does; one who cannot (nothing to release, check out or pay) reserves.
    if roll >= 0.97:
        return _merchant_command(sale)
    if (
        roll < 0.5
        or (roll < 0.58 and not sale.holds)
        or (0.58 <= roll < 0.78 and not sale.carts)
        or (roll >= 0.78 and not sale.orders)
    ):
        return {
            "type": "reserve",
            "key": sale.key(),
            "user_id": user,
            "product_id": rnd.choice(sale.products),
            "quantity": rnd.randint(1, 3),
        }
    if roll < 0.58:
        hold_id = rnd.choice(list(sale.holds))
        return {
            "type": "release",
            "key": sale.key(),
            "user_id": sale.holds.pop(hold_id),
            "hold_id": hold_id,
        }
    if roll < 0.78:
        user = rnd.choice(list(sale.carts))
        details = "" if sale.seal is None else sale.seal(user, shipping_details(user))
        return {
            "type": "checkout",
            "key": sale.key(),
            "user_id": user,
            "cart_id": sale.carts.pop(user),
            "payment_method": "pm_card_visa",
            "sealed_details": details,
        }
    order_id = rnd.choice(list(sale.orders))
    outcome = rnd.choices(("paid", "declined", "failed"), (6, 3, 1))[0]
    amount = sale.orders[order_id]
    if outcome != "declined":
        del sale.orders[order_id]
    return {
        "type": "record_payment",
        "key": sale.key(),
        "order_id": order_id,
        "outcome": outcome,
        "amount_minor": amount,
        "provider": "fakepay",
        "transaction_id": f"tx-{sale.keys}",
    }


def _merchant_command(sale: Sale) -> dict[str, object]:
    product = sale.rnd.choice(sale.products)
    if sale.rnd.random() < 0.5:
        return {"type": "restock", "key": sale.key(), "product_id": product, "quantity": 20}
    return {
        "type": "update_product",
        "key": sale.key(),
        "product_id": product,
        "price_minor": sale.rnd.randint(500, 5000),
    }


def simulate_sale(
    feed: LedgerFeed,
    *,
    seed: int,
    entries: int,
    commands_per_entry: int = 20,
    shoppers: int = 200,
    products: int = 3,
    stock: int = 100,
    seal: Seal | None = None,
) -> Sale:
    """Apply ``entries`` batches of shopper commands to ``feed``'s ledger."""
    sale = Sale(feed=feed, rnd=random.Random(seed), seal=seal)
    create = []
    for i in range(products):
        product_id = f"p{i + 1}"
        sale.products.append(product_id)
        create.append(
            {
                "type": "create_product",
                "key": sale.key(),
                "product_id": product_id,
                "name": f"Flash item {i + 1}",
                "price_minor": 1000 + 500 * i,
                "total_stock": stock,
                "per_user_limit": 5,
                "hold_ttl_ms": HOLD_TTL_MS,
            }
        )
    feed.apply(sale.now_ms, create)
    run_sale(sale, entries, commands_per_entry=commands_per_entry, shoppers=shoppers)
    return sale


def run_sale(
    sale: Sale, entries: int, *, commands_per_entry: int = 20, shoppers: int = 200
) -> None:
    """``entries`` more batches of shopper commands (the sale goes on)."""
    for _ in range(entries):
        # Mostly a busy sale; now and then a lull long enough for holds and orders to lapse.
        lull = sale.rnd.random() < 0.03
        sale.now_ms += sale.rnd.randint(10, 1500) + (HOLD_TTL_MS if lull else 0)
        commands = [_command(sale, shoppers) for _ in range(commands_per_entry)]
        applied = sale.feed.apply(sale.now_ms, commands)
        for result in applied.results:
            if isinstance(result, HoldPlaced):
                sale.holds[result.hold_id] = result.user_id
                sale.carts[result.user_id] = result.cart_id
            elif isinstance(result, OrderPlaced):
                sale.orders[result.order_id] = result.amount_minor
