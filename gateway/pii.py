"""Personal details (shipping address, email) on their way into the ledger.

Theory of operation: the ledger stores a checkout's personal details as opaque text
(``Checkout.sealed_details``) and never reads them. ``seal_details`` is the single place
where the gateway turns them into that text (``seal_details_async`` on the event loop:
a shopper's first data key is made off the loop, group-committed with other new
shoppers'); everything else passes the result along.
It seals them with AES-256-GCM under the shopper's data key (``pii``, see docs/DATA.md);
sealing is deterministic, so a retried checkout produces the very same command and its
idempotency key matches. The process must call ``pii.gateway.install_sealer(config)`` at
start; until then sealing fails rather than let personal data out in clear.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pii.gateway

log = logging.getLogger("gateway.pii")

SEAL_FORMAT = "json/v1"


def seal_details(user_id: str, details: Mapping[str, object]) -> str:
    """The opaque text carried in the ledger for ``user_id``'s personal ``details``:
    ``v1.<key_id>.<user_id>.<ciphertext>`` (``pii.envelope``). Raises
    ``pii.sealing.DetailsTooLarge`` (a ValueError) beyond the ledger's text limit."""
    return pii.gateway.seal_details(user_id, details)


async def seal_details_async(user_id: str, details: Mapping[str, object]) -> str:
    """``seal_details`` for the event loop: a cached key seals at once; a new shopper's
    key is fetched or made on the key store's thread, never blocking the loop."""
    return await pii.gateway.seal_details_async(user_id, details)


def prepare_key(user_id: str) -> None:
    """The shopper's hold was placed: make or fetch their data key now, in the
    background, so their checkout does not wait for it (``pii.keyloader``). Never
    raises: the hold is committed, and a warm-up that fails must not turn its answer
    into an error (the checkout loads the key itself)."""
    try:
        pii.gateway.prefetch_key(user_id)
    except Exception:
        log.warning("preparing a data key failed", exc_info=True)
