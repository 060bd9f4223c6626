"""Every limit of the ledger, with its number (TigerBeetle style: a limit on everything).

Commands outside these bounds are refused with ``Reason.INVALID``.
"""

from __future__ import annotations

MAX_ID_LEN = 128  # product, user, hold, cart, order and idempotency-key ids
MAX_NAME_LEN = 200  # product names
MAX_TEXT_LEN = 4096  # opaque text such as sealed personal data or provider references
MAX_QUANTITY = 10_000  # units in one reserve
MAX_STOCK = 1_000_000_000  # total stock of one product
MAX_PRICE_MINOR = 10**12  # price of one unit, in minor units (cents)
MAX_COMMANDS_PER_ENTRY = 2_000  # commands in one Raft entry (one batch)
MAX_HOLDS_PER_CART = 100  # active holds in one cart
MAX_TTL_MS = 7 * 24 * 3600 * 1000  # hold TTL and payment TTL upper bound

DEFAULT_HOLD_TTL_MS = 300_000  # 5 minutes, as the specification asks
DEFAULT_PAYMENT_TTL_MS = 600_000  # 10 minutes from checkout to pay
DEFAULT_RETENTION_MS = 3_600_000  # idempotency keys and ended holds/orders kept 1 hour
DEFAULT_MAX_IDEMPOTENCY_KEYS = 2_000_000  # hard cap; the oldest keys are forgotten first
