"""Proof of work in place of a CAPTCHA: ALTCHA challenges (the v1 scheme, SHA-256).

Theory of operation: a gateway hands out a challenge, ``SHA-256(salt + n)`` for a secret
``n`` in ``0..maxnumber``, signed with an HMAC key derived from the cluster secret (so
every gateway of the cluster verifies what any of them issued). The salt carries two
parameters, covered by the hash and so by the signature: ``expires`` (Unix seconds) and
``issued`` (Unix milliseconds, so a write can be timed against the page that solved
it). The shopper's browser finds ``n`` (mean work: maxnumber / 2 hashes) and sends the
ALTCHA payload (base64 JSON) with the write; the gateway checks the hash, the signature
and the expiry here, then asks the replay store (bots.replay) whether the solution was
used before. Pure: the caller passes the clock.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from altcha.v1 import SHA256, create_challenge, hash_hex, hmac_hex, solve_challenge

from cluster.auth import derive_key

CHALLENGE_LABEL = b"flashsale/bots-challenge/v1"
ALGORITHM = SHA256
MAX_PAYLOAD_CHARS = 2048  # a real payload is ~300 characters; more is not a solution
MAX_SALT_CHARS = 256
MAX_NUMBER = 10_000_000  # the console's highest difficulty; a larger number is no solution
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ChallengeInvalid(Exception):
    """A solution payload that does not prove the work (bad, forged or expired)."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Solved:
    """A verified solution: ``challenge`` identifies it for the replay store."""

    challenge: str
    issued_s: float  # when the challenge was handed out
    expires_s: float  # after this the solution is worthless (the replay store may forget it)


def challenge_key(secret: str) -> bytes:
    """The HMAC key of challenges, derived from the cluster secret for this use only."""
    return derive_key(secret, CHALLENGE_LABEL)


def new_challenge(key: bytes, *, max_number: int, now: float, ttl_s: float) -> dict[str, Any]:
    """A fresh challenge as the ALTCHA widget reads it (plus ``expires_at_ms``)."""
    expires = math.floor(now + ttl_s)
    challenge = create_challenge(
        algorithm=ALGORITHM,
        max_number=max_number,
        salt_length=12,
        hmac_key=key,
        salt="",
        number=None,
        expires=datetime.fromtimestamp(expires, UTC),
        params={"issued": str(int(now * 1000))},
    )
    return {
        "algorithm": challenge.algorithm,
        "challenge": challenge.challenge,
        "maxnumber": challenge.max_number,
        "salt": challenge.salt,
        "signature": challenge.signature,
        "expires_at_ms": expires * 1000,
    }


def _decode(payload: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_CHARS:
        raise ChallengeInvalid(f"the solution is longer than {MAX_PAYLOAD_CHARS} characters")
    try:
        data = json.loads(base64.b64decode(payload.strip(), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ChallengeInvalid("the solution is not base64-encoded JSON") from exc
    if not isinstance(data, dict):
        raise ChallengeInvalid("the solution is not a JSON object")
    return data


def _param(params: dict[str, list[str]], name: str) -> float:
    values = params.get(name)
    if not values or len(values) != 1:
        raise ChallengeInvalid(f"the challenge has no single {name!r} parameter")
    try:
        value = float(values[0])
    except ValueError:
        raise ChallengeInvalid(f"the challenge's {name!r} is not a number") from None
    if not math.isfinite(value):
        raise ChallengeInvalid(f"the challenge's {name!r} is not a number")
    return value


def verify(key: bytes, payload: str, *, now: float) -> Solved:
    """The solution in an ``X-Altcha`` header, checked; ChallengeInvalid otherwise.

    The comparison is the ALTCHA v1 one (altcha.verify_solution_v1) done with
    constant-time comparisons, since the expected signature is a secret until sent.
    """
    data = _decode(payload)
    algorithm, challenge = data.get("algorithm"), data.get("challenge")
    number, salt, signature = data.get("number"), data.get("salt"), data.get("signature")
    if algorithm != ALGORITHM:
        raise ChallengeInvalid(f"algorithm must be {ALGORITHM}")
    if not isinstance(challenge, str) or not _HEX64.fullmatch(challenge):
        raise ChallengeInvalid("challenge must be 64 lowercase hex digits")
    if not isinstance(signature, str) or not _HEX64.fullmatch(signature):
        raise ChallengeInvalid("signature must be 64 lowercase hex digits")
    if type(number) is not int or not 0 <= number <= MAX_NUMBER:
        raise ChallengeInvalid(f"number must be an integer in 0..{MAX_NUMBER}")
    if not isinstance(salt, str) or not 0 < len(salt) <= MAX_SALT_CHARS:
        raise ChallengeInvalid(f"salt must be 1..{MAX_SALT_CHARS} characters")
    delimited = salt if salt.endswith("&") else salt + "&"
    expected_challenge = hash_hex(ALGORITHM, (delimited + str(number)).encode())
    expected_signature = hmac_hex(ALGORITHM, expected_challenge.encode(), key)
    if not (
        hmac.compare_digest(expected_challenge, challenge)
        and hmac.compare_digest(expected_signature, signature)
    ):
        raise ChallengeInvalid("the solution does not solve a challenge of this shop")
    # The salt is signed (through the challenge hash): its parameters can be trusted.
    params = urllib.parse.parse_qs(salt.split("?", 1)[1]) if "?" in salt else {}
    expires = _param(params, "expires")
    issued_ms = _param(params, "issued")
    if expires < now:
        raise ChallengeInvalid("the challenge expired; fetch a new one", expired=True)
    return Solved(challenge=challenge, issued_s=issued_ms / 1000, expires_s=expires)


def solve(challenge: dict[str, Any]) -> str | None:
    """The ALTCHA payload solving ``challenge`` (what the widget sends); None when the
    challenge has no solution in its range. For tests and trusted tools: real shoppers
    solve in the browser (gateway/static/pow-worker.js)."""
    found = solve_challenge(
        str(challenge["challenge"]),
        str(challenge["salt"]),
        ALGORITHM,
        int(challenge["maxnumber"]),
    )
    if found is None:
        return None
    doc = {
        "algorithm": ALGORITHM,
        "challenge": challenge["challenge"],
        "number": found.number,
        "salt": challenge["salt"],
        "signature": challenge["signature"],
    }
    return base64.b64encode(json.dumps(doc).encode()).decode()
