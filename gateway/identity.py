"""Shopper identity: HMAC-signed bearer tokens.

Theory of operation: a token is ``v1.<payload>.<signature>`` where ``payload`` is the
base64url (unpadded) JSON ``{"sub": user_id, "exp": expiry_s}`` and ``signature`` the
base64url HMAC-SHA256 of ``v1.<payload>`` under a key derived from the cluster secret
for this one use (``flashsale/shopper-token/v1``), so a shopper token reveals nothing
about the secret or the internal API token. Verification is constant time and checks
the expiry against the caller's clock; everything here is pure apart from the default
``now_s``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import re
import time

from cluster.auth import derive_key

SHOPPER_TOKEN_LABEL = b"flashsale/shopper-token/v1"
TOKEN_VERSION = "v1"
MAX_USER_ID_LEN = 64  # leaves room for the idempotency key inside ledger.limits.MAX_ID_LEN
MAX_TOKEN_TTL_S = 366 * 24 * 3600
MAX_TOKEN_LEN = 512  # longer Authorization values are refused before any decoding
# ':' and '#' are excluded on purpose: they separate the user id from the client's
# Idempotency-Key inside ledger keys (gateway.idempotency).
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")


class InvalidToken(ValueError):
    """The token is malformed, forged or expired (the message says which, no secrets)."""


def valid_user_id(user_id: str) -> bool:
    """True when ``user_id`` is acceptable as a shopper id."""
    return len(user_id) <= MAX_USER_ID_LEN and USER_ID_PATTERN.fullmatch(user_id) is not None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, signed_part: str) -> str:
    return _b64(hmac.digest(key, signed_part.encode("ascii"), "sha256"))


@functools.lru_cache(maxsize=8)
def _token_key(secret: str) -> bytes:
    # Derived once per secret rather than per request (an HMAC of its own): a process
    # holds one cluster secret, tests a few.
    return derive_key(secret, SHOPPER_TOKEN_LABEL)


def issue_token(secret: str, user_id: str, ttl_s: int, *, now_s: float | None = None) -> str:
    """A bearer token proving ``user_id`` for ``ttl_s`` seconds."""
    if not valid_user_id(user_id):
        raise ValueError(
            f"user id {user_id!r}: expected 1..{MAX_USER_ID_LEN} characters of "
            "letters, digits and ._@+- (starting with a letter or digit)"
        )
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise ValueError(f"ttl_s={ttl_s}: expected 1..{MAX_TOKEN_TTL_S}")
    now = time.time() if now_s is None else now_s
    payload = {"sub": user_id, "exp": int(now) + ttl_s}
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signed_part = f"{TOKEN_VERSION}.{body}"
    key = _token_key(secret)
    return f"{signed_part}.{_sign(key, signed_part)}"


def _claims(payload: str) -> tuple[str, int]:
    """``(sub, exp)`` of a token payload; InvalidToken when malformed. Pure."""
    try:
        decoded = json.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token payload") from None
    if not isinstance(decoded, dict):
        raise InvalidToken("malformed token payload")
    sub, exp = decoded.get("sub"), decoded.get("exp")
    if not isinstance(sub, str) or not valid_user_id(sub):
        raise InvalidToken("malformed token subject")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise InvalidToken("malformed token expiry")
    return sub, exp


# Tokens whose signature and claims were verified, by their whole text: a shopper sends
# the same token with every request, and its HMAC was the largest cost of a sold-out
# refusal (docs/BENCHMARKS.md). Only an exact string already proven under the same key
# hits; the expiry is checked on every call; forgeries are never kept (the function
# raises). Bounded: the least recently used token is dropped first.
VERIFIED_CACHE_SIZE = 16_384


@functools.lru_cache(maxsize=VERIFIED_CACHE_SIZE)
def _verified(key: bytes, token: str) -> tuple[str, int]:
    """``(sub, exp)`` of a token whose signature is good under ``key``; InvalidToken
    otherwise. Pure (the expiry is the caller's to check)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION:
        raise InvalidToken("malformed token")
    if not hmac.compare_digest(_sign(key, f"{parts[0]}.{parts[1]}"), parts[2]):
        raise InvalidToken("bad token signature")
    return _claims(parts[1])


def verify_token(secret: str, token: str, *, now_s: float | None = None) -> str:
    """The user id a valid, unexpired token proves; InvalidToken otherwise."""
    if len(token) > MAX_TOKEN_LEN:
        raise InvalidToken("token too long")
    if not token.isascii():  # hmac.compare_digest and the signature raise on non-ASCII
        raise InvalidToken("malformed token")
    sub, exp = _verified(_token_key(secret), token)
    now = time.time() if now_s is None else now_s
    if now >= exp:
        raise InvalidToken("token expired")
    return sub


def bearer_user(secret: str, authorization: str | None, *, now_s: float | None = None) -> str:
    """The user id proven by an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        raise InvalidToken("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("expected 'Authorization: Bearer <token>'")
    return verify_token(secret, token.strip(), now_s=now_s)
