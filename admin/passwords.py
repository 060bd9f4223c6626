"""Operator passwords, hashed with scrypt.

Theory of operation: a stored hash is ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<key b64>``
with a fresh 16-byte salt per password, so the cost parameters travel with each hash and
can be raised later without breaking older ones. Verification derives the key again and
compares in constant time (cryptography's ``Scrypt.verify``). Verifying against an unknown
username still runs one derivation (``verify_dummy``), so response time does not tell
whether a username exists.
"""

from __future__ import annotations

import base64
import functools
import secrets

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from admin.limits import MAX_PASSWORD_LEN, MIN_PASSWORD_LEN

SCHEME = "scrypt"
LOG2_N = 15  # n = 32768: about 32 MiB and tens of milliseconds per derivation
BLOCK_R = 8
PARALLEL_P = 1
SALT_BYTES = 16
KEY_BYTES = 32


class PasswordPolicyError(ValueError):
    """A new password breaks the policy; the message says which rule."""


def check_policy(password: str) -> None:
    """Refuse passwords that are too short or too long (see admin.limits)."""
    if len(password) < MIN_PASSWORD_LEN:
        raise PasswordPolicyError(
            f"password has {len(password)} characters; at least {MIN_PASSWORD_LEN} are required"
        )
    if len(password) > MAX_PASSWORD_LEN:
        raise PasswordPolicyError(f"password is longer than {MAX_PASSWORD_LEN} characters")


def _kdf(salt: bytes, log2_n: int, r: int, p: int) -> Scrypt:
    return Scrypt(salt=salt, length=KEY_BYTES, n=2**log2_n, r=r, p=p)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` in the stored format."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _kdf(salt, LOG2_N, BLOCK_R, PARALLEL_P).derive(password.encode("utf-8"))
    return f"{SCHEME}${LOG2_N}${BLOCK_R}${PARALLEL_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time comparison)."""
    if len(password) > MAX_PASSWORD_LEN:
        return False
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return False
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    if not (1 <= log2_n <= 24 and 1 <= r <= 64 and 1 <= p <= 16):
        return False
    try:
        _kdf(salt, log2_n, r, p).verify(password.encode("utf-8"), key)
    except InvalidKey:
        return False
    return True


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(24))


def verify_dummy(password: str) -> bool:
    """Spend the time of one verification, for a username that does not exist. Always False."""
    verify_password(password, _dummy_hash())
    return False
