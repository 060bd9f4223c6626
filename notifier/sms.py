"""SMS through a provider's REST API, behind a small protocol; Twilio's is built in.

Theory of operation: ``SmsProvider.send(to, body, key)`` hands one message over and
answers the provider's id for it. ``TwilioSms`` speaks Twilio's Messages API: a
form-encoded ``POST`` of ``To``, ``From`` and ``Body`` with HTTP basic auth (account SID,
auth token), answered 201 with the message's ``sid``. The notification id goes along as
``Idempotency-Key``, so a provider that honours it drops the one repeat a crash can
cause. 429, 401/403 (credentials an operator can fix), 5xx, timeouts and connection failures
are worth another try; any other 4xx (a malformed number, say) is permanent.
"""

from __future__ import annotations

import base64
import json
from typing import Protocol

import aiohttp

from notifier.delivery import MAX_ERROR_CHARS, SendFailed

# Worth another try: credentials an operator can fix and restart, timeouts, throttling.
RETRYABLE_4XX = frozenset({401, 403, 408, 429})


class SmsProvider(Protocol):
    name: str

    async def send(self, to: str, body: str, idempotency_key: str) -> str:
        """Hand one SMS to the provider; its id for it (``SendFailed`` otherwise)."""
        ...

    async def close(self) -> None: ...


class TwilioSms:
    """Twilio's Messages API (or any service speaking it)."""

    name = "twilio"

    def __init__(
        self, url: str, *, account: str, token: str, sender: str, timeout_s: float
    ) -> None:
        self.url = url
        self.sender = sender
        if ":" in account:
            raise ValueError("an SMS account name cannot contain ':' (HTTP basic auth)")
        credentials = base64.b64encode(f"{account}:{token}".encode()).decode("ascii")
        self._authorization = f"Basic {credentials}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, to: str, body: str, idempotency_key: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        form = {"To": to, "From": self.sender, "Body": body}
        try:
            async with self._session.post(
                self.url,
                data=form,
                headers={
                    "Authorization": self._authorization,
                    "Idempotency-Key": idempotency_key,
                },
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}", permanent=False) from None
        if 200 <= status < 300:
            return _sid(text)
        detail = _error(text)
        raise SendFailed(
            f"HTTP {status}: {detail}",
            permanent=400 <= status < 500 and status not in RETRYABLE_4XX,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _sid(text: str) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        return ""
    sid = answer.get("sid") if isinstance(answer, dict) else None
    return sid if isinstance(sid, str) else ""


def _error(text: str) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        return text[:MAX_ERROR_CHARS]
    if isinstance(answer, dict):
        return f"{answer.get('code', '')} {answer.get('message', '')}".strip()[:MAX_ERROR_CHARS]
    return text[:MAX_ERROR_CHARS]
