"""Unsealing a shopper's personal details for an operator with the ``pii`` right.

The gateway seals a checkout's personal details with the shopper's data key (the ``pii``
package: AES-256-GCM, ``v1.<key_id>.<user_id>.<b64>``) before they enter the ledger.
This is the inverse, for the console: it reads the shopper's wrapped data key from the
key store, unwraps it with the master key and opens the value in memory. An erased
shopper (crypto-shredded key), a tampered value or an unknown format is refused with a
reason rather than shown half-read. The console calls it only on an operator's explicit
request, and audits each call.
"""

from __future__ import annotations

from typing import Any

from cluster.config import ClusterConfig
from pii.errors import KeyErased, KeyNotFound, MalformedSealed, PiiError, TamperedError
from pii.keystore import KeyStore
from pii.sealing import Unsealer


class UnsealError(ValueError):
    """The sealed text cannot be opened by this console; the message says why."""


def unseal(config: ClusterConfig, sealed: str) -> dict[str, Any]:
    """The personal details inside ``sealed`` (``{"user_id", "details": {...}}``).

    Blocking (it reads the key store): call it from a worker thread."""
    if not sealed:
        raise UnsealError("this order carries no personal details")
    try:
        keys = KeyStore.open(config)
    except PiiError as exc:
        raise UnsealError(f"the key store cannot be opened: {exc}") from None
    try:
        opened = Unsealer(keys).unseal(sealed)
    except KeyErased as exc:
        raise UnsealError(str(exc)) from None
    except KeyNotFound:
        raise UnsealError("the shopper's data key is not in the key store") from None
    except TamperedError:
        raise UnsealError("the sealed details fail authentication (altered or misplaced)") from None
    except MalformedSealed as exc:
        raise UnsealError(f"sealed details are in an unknown format: {exc}") from None
    finally:
        keys.close()
    return {"user_id": opened.user_id, "details": opened.details}
