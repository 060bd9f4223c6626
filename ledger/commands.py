"""Commands: the only way the ledger's state changes.

Every command carries an idempotency ``key`` (the same key gives the same result, for as
long as the ledger remembers it) and ``at_ms``, the leader's wall-clock time in
milliseconds since the Unix epoch, stamped when the leader proposes the Raft entry. The
ledger never reads a clock: it keeps its own time monotonic as ``max(at_ms, last_at_ms)``.

Commands are small immutable records. ``ledger.codec`` turns them into and out of the
JSON-compatible dicts that travel over HTTP and through the Raft log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ledger.limits import DEFAULT_HOLD_TTL_MS


class PaymentOutcome(StrEnum):
    """What a payment provider said about one attempt to pay an order."""

    PAID = "paid"  # money captured: reserved -> sold, order completed
    DECLINED = "declined"  # this attempt failed; the shopper may retry until the deadline
    FAILED = "failed"  # terminal: the order fails, its units return to available


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateProduct:
    """Create a product with ``total_stock`` units available. The id must be new."""

    key: str
    at_ms: int = 0
    product_id: str
    name: str
    price_minor: int
    currency: str = "USD"
    total_stock: int
    opens_at_ms: int | None = None  # None: open from creation
    closes_at_ms: int | None = None  # None: never closes
    per_user_limit: int | None = None  # None: no per-user limit
    hold_ttl_ms: int = DEFAULT_HOLD_TTL_MS


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateProduct:
    """Change a product's terms. ``None`` leaves a field as it is.

    ``clear_opens``/``clear_closes``/``clear_limit`` set the matching field back to None
    (open at once / never closes / no limit). Stock changes go through ``Restock``.
    """

    key: str
    at_ms: int = 0
    product_id: str
    name: str | None = None
    price_minor: int | None = None
    opens_at_ms: int | None = None
    closes_at_ms: int | None = None
    per_user_limit: int | None = None
    hold_ttl_ms: int | None = None
    clear_opens: bool = False
    clear_closes: bool = False
    clear_limit: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Restock:
    """Add ``quantity`` units (outside -> available); a negative quantity withdraws
    units that are still available (available -> outside)."""

    key: str
    at_ms: int = 0
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reserve:
    """Hold ``quantity`` units for ``user_id`` (available -> reserved) until the
    product's hold TTL runs out. The hold joins the user's open cart (one is opened
    when the user has none)."""

    key: str
    at_ms: int = 0
    user_id: str
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Give a hold back before it expires (reserved -> available)."""

    key: str
    at_ms: int = 0
    user_id: str
    hold_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkout:
    """Turn every active hold of the cart into one pending order with a payment
    deadline. The amount is computed by the ledger from product prices.

    ``sealed_details`` is opaque text (personal data already encrypted by the gateway:
    shipping address, contact); the ledger stores and forwards it, never reads it.
    """

    key: str
    at_ms: int = 0
    user_id: str
    cart_id: str
    payment_method: str = ""
    sealed_details: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordPayment:
    """Record what the payment provider said about an order."""

    key: str
    at_ms: int = 0
    order_id: str
    outcome: PaymentOutcome
    amount_minor: int
    provider: str = ""
    transaction_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Expire:
    """Expire every hold and unpaid order whose deadline is at or before ``at_ms``.

    The ledger also expires due items lazily before every other command, so this
    command only matters when nothing else is being applied (the leader proposes it on
    a short period when ``Ledger.next_deadline_ms()`` has passed)."""

    key: str
    at_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Configure:
    """Change ledger-wide settings carried in the replicated state."""

    key: str
    at_ms: int = 0
    payment_ttl_ms: int | None = None
    retention_ms: int | None = None
    max_idempotency_keys: int | None = None


Command = (
    CreateProduct
    | UpdateProduct
    | Restock
    | Reserve
    | Release
    | Checkout
    | RecordPayment
    | Expire
    | Configure
)

# The wire name of each command type ("type" field of its dict form).
COMMAND_TYPES: dict[str, type[Command]] = {
    "create_product": CreateProduct,
    "update_product": UpdateProduct,
    "restock": Restock,
    "reserve": Reserve,
    "release": Release,
    "checkout": Checkout,
    "record_payment": RecordPayment,
    "expire": Expire,
    "configure": Configure,
}
