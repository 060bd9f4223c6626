"""What a person's browser does to get past the bot defences, for clients that are not one.

The shop page (gateway/static/shop.js) sends a browser's User-Agent, solves each
proof-of-work challenge (``GET /challenge``, ALTCHA v1) and waits until the challenge's
``use_after_ms`` before the write it unlocks (a quicker write is scored ``fast-write``),
and polls its waiting-room ticket at half the estimated wait, between 0.5 and 5 s. The
locust scenario with bots (loadtests/locust_bots.py) and the test clients
(tests/support/shopper.py) do the same through these functions; they are pure apart from
the CPU the solver burns (altcha's own solver via bots.challenge.solve: about 25,000
SHA-256 at the default difficulty, some 20 ms in CPython).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bots.challenge import solve

BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
MIN_POLL_S = 0.5  # the shop page's bounds on its waiting-room polls
MAX_POLL_S = 5.0


@dataclass(frozen=True, slots=True)
class Solution:
    """A solved challenge: the ``X-Altcha`` header value, and when (Unix seconds) a write
    may carry it without being scored as a script's."""

    payload: str
    use_after_s: float


def solution(challenge: Mapping[str, Any]) -> Solution:
    """Solve the body of a ``GET /challenge`` answer (ValueError when it has no
    solution in its range, which a challenge of ours always has)."""
    payload = solve(dict(challenge))
    if payload is None:
        raise ValueError(f"the challenge has no solution: {dict(challenge)}")
    return Solution(payload, int(challenge["use_after_ms"]) / 1000)


def poll_after_s(place: Mapping[str, Any]) -> float:
    """How long the shop page waits before it asks about its ticket again: half the
    estimated wait, between MIN_POLL_S and MAX_POLL_S."""
    estimate = float(place.get("estimated_wait_s") or 0.0)
    return min(MAX_POLL_S, max(MIN_POLL_S, estimate / 2))


def shopper_address(n: int) -> str:
    """The n-th load-test shopper's source address: 127.0.1.1, 127.0.1.2, ... (127.0.0.x
    is left to the cluster's own processes). The defences limit per IP, and everything
    here runs on one machine, so each simulated person gets an address of their own."""
    return f"127.0.{1 + n // 250 % 254}.{1 + n % 250}"
