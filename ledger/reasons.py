"""Stable reasons a ledger command can be refused for.

The string values are part of the public contract: the gateway maps each one to an
HTTP status and a problem+json ``type``, the chaos checker reads them from histories,
and clients may match on them. Never rename a value; add new ones instead.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a command was refused. Refusals are results, never exceptions."""

    SOLD_OUT = "sold_out"  # not enough available units at this place in the log
    LIMIT_REACHED = "limit_reached"  # the user's per-product limit would be exceeded
    NOT_OPEN = "not_open"  # the product's sale window has not opened yet
    CLOSED = "closed"  # the product's sale window has closed
    HOLD_EXPIRED = "hold_expired"  # the hold (or the order's payment deadline) ran out
    UNKNOWN_HOLD = "unknown_hold"
    NOT_OWNER = "not_owner"  # the hold, cart or order belongs to another user
    INVALID = "invalid"  # malformed or out-of-range command
    UNKNOWN_PRODUCT = "unknown_product"
    UNKNOWN_CART = "unknown_cart"
    UNKNOWN_ORDER = "unknown_order"
    ALREADY_EXISTS = "already_exists"  # create of a product id that exists
    EMPTY_CART = "empty_cart"  # checkout of a cart without any active hold
    NOT_PENDING = "not_pending"  # payment recorded for an order that is no longer pending
    KEY_REUSED = "key_reused"  # idempotency key seen before with a different command
    AMOUNT_MISMATCH = "amount_mismatch"  # payment amount differs from the order's amount
