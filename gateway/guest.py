"""Guest sessions: a bearer token for a fresh random shopper, for the demo shop page.

Theory of operation: ``POST /session/guest`` mints a new user id (``guest-`` and 16
lowercase letters from the OS's random source: letters, because the gateway refuses any
request holding a run of digits that passes the Luhn check, as a card number would)
and a token proving it (gateway.identity), so a browser can shop without an account.
Nothing is stored: the token is the session. A new id per call means a guest session
sidesteps nothing a real shopper could not, except that anyone can have as many as
they like, which is why it is only on where that does not matter: in development mode
by default, in production only when the operator sets ``[gateway] guest_sessions =
true`` (for a demo or a load test). Otherwise the endpoint answers 403
``guest-sessions-disabled`` and shops hand out tokens themselves
(``flashsale token USER_ID``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from cluster.config import ClusterConfig
from gateway.identity import issue_token
from gateway.problems import Problem
from gateway.shapes import rfc3339

GUEST_PREFIX = "guest-"
GUEST_ID_LETTERS = 16  # 26**16 ids (75 random bits): collisions are out of reach
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
GUEST_TOKEN_TTL_S = 4 * 3600  # a guest's token outlives any sale session (capped by token_ttl_s)


def guest_sessions_enabled(config: ClusterConfig) -> bool:
    """True when this cluster's gateways may mint guest sessions."""
    explicit = config.gateway_settings.guest_sessions
    return config.mode == "development" if explicit is None else explicit


def guest_ttl_s(config: ClusterConfig) -> int:
    return min(GUEST_TOKEN_TTL_S, config.gateway_settings.token_ttl_s)


def new_guest_id() -> str:
    """A fresh shopper id that no one else holds."""
    return GUEST_PREFIX + "".join(secrets.choice(_LETTERS) for _ in range(GUEST_ID_LETTERS))


def guest_sessions_disabled() -> Problem:
    return Problem(
        403,
        "guest-sessions-disabled",
        "Guest sessions are off",
        "this gateway does not issue guest sessions; sign in with a shopper token",
    )


def guest_session_body(config: ClusterConfig, *, now_s: float | None = None) -> dict[str, Any]:
    """A new guest: the answer to ``POST /session/guest`` (call only when enabled)."""
    now = time.time() if now_s is None else now_s
    ttl_s = guest_ttl_s(config)
    user_id = new_guest_id()
    expires_at_ms = (int(now) + ttl_s) * 1000
    return {
        "user_id": user_id,
        "token": issue_token(config.secret, user_id, ttl_s, now_s=now),
        "token_type": "Bearer",
        "expires_at": rfc3339(expires_at_ms),
        "expires_at_ms": expires_at_ms,
        "now_ms": int(now * 1000),
    }
