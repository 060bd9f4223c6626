"""Idempotency keys: from the shopper's ``Idempotency-Key`` header to a ledger key.

Theory of operation: the client's key is scoped to the user who sent it, so two shoppers
who happen to pick the same key never meet in the ledger: the ledger key is
``"{user_id}:{client_key}"``. User ids contain neither ':' nor '#'
(gateway.identity.USER_ID_PATTERN), so when that text would exceed the ledger's id limit
the form ``"{user_id}#{sha256(client_key)}"`` is used instead and the two forms can never
collide. A request without the header gets a fresh random key, returned to the client in
the response so it can retry. Pure apart from ``new_client_key``.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from ledger.limits import MAX_ID_LEN

HEADER = "Idempotency-Key"
MAX_CLIENT_KEY_LEN = 128
_CLIENT_KEY_PATTERN = re.compile(r"[\x21-\x7e]+")  # visible ASCII, no spaces
_DIGEST_CHARS = 56


def valid_client_key(key: str) -> bool:
    """True when ``key`` is acceptable as an ``Idempotency-Key`` header value."""
    return 0 < len(key) <= MAX_CLIENT_KEY_LEN and _CLIENT_KEY_PATTERN.fullmatch(key) is not None


def new_client_key() -> str:
    """A fresh key for a request that came without one."""
    return secrets.token_hex(16)


def ledger_key(user_id: str, client_key: str) -> str:
    """The ledger idempotency key for ``client_key`` sent by ``user_id``.

    A key reused for a different command (say a checkout after a reserve) is refused by
    the ledger as ``key_reused``: one key names one request, as with most payment APIs.
    """
    plain = f"{user_id}:{client_key}"
    if len(plain) <= MAX_ID_LEN:
        return plain
    digest = hashlib.sha256(client_key.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    return f"{user_id}#{digest}"
