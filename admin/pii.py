"""Unsealing a shopper's personal details for an operator with the ``pii`` right.

The gateway seals a checkout's personal details (``gateway.pii.seal_details``) into the
opaque text the ledger stores with the order. This is the inverse for the formats the
console knows (the gateway's canonical JSON, ``json/v1``); an encrypted value (the
``pii`` package's envelope) or an unknown format is refused with a reason rather than
shown half-read. The console calls it only on an operator's explicit request, and
audits each call.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.pii import SEAL_FORMAT


class UnsealError(ValueError):
    """The sealed text cannot be opened by this console; the message says why."""


def unseal(sealed: str) -> dict[str, Any]:
    """The personal details inside ``sealed`` (``{"user_id", "details": {...}}``)."""
    if not sealed:
        raise UnsealError("this order carries no personal details")
    if not sealed.startswith("{"):
        raise UnsealError(
            "these details are encrypted (or in a format this console cannot read); the "
            "console has no access to the shoppers' data keys"
        )
    try:
        value = json.loads(sealed)
    except ValueError:
        raise UnsealError("sealed details are in an unknown format") from None
    if not isinstance(value, dict):
        raise UnsealError("sealed details are in an unknown format")
    fmt = value.get("format")
    if fmt != SEAL_FORMAT:
        raise UnsealError(f"sealed details use format {fmt!r}, which this console cannot open")
    details = value.get("details")
    return {
        "user_id": str(value.get("user_id", "")),
        "details": details if isinstance(details, dict) else {},
    }
