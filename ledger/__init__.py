"""flashsale's stock ledger: the pure, deterministic state machine replicated by Raft.

``Ledger`` applies batches of commands (``ledger.commands``) and answers each with a
result (``ledger.results``) and a stream of events (``ledger.events``); ``ledger.codec``
is the wire format of all of them.
"""

from __future__ import annotations

from ledger.commands import (
    COMMAND_TYPES,
    Checkout,
    Command,
    Configure,
    CreateProduct,
    Expire,
    PaymentOutcome,
    RecordPayment,
    Release,
    Reserve,
    Restock,
    UpdateProduct,
)
from ledger.errors import InvariantViolation
from ledger.events import Bucket, Event, EventKind, JSONValue, Move, StockLevel
from ledger.ledger import Applied, Ledger
from ledger.reasons import Reason
from ledger.results import (
    RESULT_TYPES,
    Configured,
    Expired,
    HoldPlaced,
    HoldReleased,
    OrderPlaced,
    PaymentRecorded,
    ProductSaved,
    Rejected,
    Restocked,
    Result,
)
from ledger.settings import Settings
from ledger.views import (
    CartStatus,
    CartView,
    HoldStatus,
    HoldView,
    OrderLine,
    OrderStatus,
    OrderView,
    PaymentStatus,
    ProductView,
)

__all__ = [
    "COMMAND_TYPES",
    "RESULT_TYPES",
    "Applied",
    "Bucket",
    "CartStatus",
    "CartView",
    "Checkout",
    "Command",
    "Configure",
    "Configured",
    "CreateProduct",
    "Event",
    "EventKind",
    "Expire",
    "Expired",
    "HoldPlaced",
    "HoldReleased",
    "HoldStatus",
    "HoldView",
    "InvariantViolation",
    "JSONValue",
    "Ledger",
    "Move",
    "OrderLine",
    "OrderPlaced",
    "OrderStatus",
    "OrderView",
    "PaymentOutcome",
    "PaymentRecorded",
    "PaymentStatus",
    "ProductSaved",
    "ProductView",
    "Reason",
    "RecordPayment",
    "Rejected",
    "Release",
    "Reserve",
    "Restock",
    "Restocked",
    "Result",
    "Settings",
    "StockLevel",
    "UpdateProduct",
]
