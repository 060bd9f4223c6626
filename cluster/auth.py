"""Credentials derived from the cluster secret.

One secret in cluster.toml; every use gets its own key derived by HMAC with a distinct
label, so a key leaked from one use (say, the internal API token in a log) does not
reveal the secret or the keys of other uses (Raft encryption, shopper tokens).
"""

from __future__ import annotations

import hashlib
import hmac

INTERNAL_API_LABEL = b"flashsale/internal-api/v1"
RAFT_LABEL = b"flashsale/raft/v1"


def derive_key(secret: str, label: bytes) -> bytes:
    """A 32-byte key for one use of the cluster secret."""
    return hmac.new(secret.encode("utf-8"), label, hashlib.sha256).digest()


def internal_token(secret: str) -> str:
    """The bearer token for the nodes' internal API (``Authorization: Bearer ...``)."""
    return derive_key(secret, INTERNAL_API_LABEL).hex()


def raft_password(secret: str) -> str:
    """The password given to pysyncobj (encrypts and authenticates Raft traffic)."""
    return derive_key(secret, RAFT_LABEL).hex()


def check_bearer(header: str | None, secret: str) -> bool:
    """True when an Authorization header carries the internal token (constant time)."""
    if not header or not header.isascii() or not header.startswith("Bearer "):
        return False  # compare_digest raises on non-ASCII text
    return hmac.compare_digest(header[7:].strip(), internal_token(secret))
