"""A test client that gets past the bot defences the way a person's browser does.

It takes a waiting-room ticket under its own bearer token (a place in line is personal)
and waits for admission (``POST /queue``, ``GET /queue/{ticket}``), solves each
proof-of-work challenge (``GET /challenge``) with altcha's own solver, sends a
browser's User-Agent, and waits until the challenge's ``use_after_ms``
(``min_page_to_write_ms`` after it was issued) before the write it unlocks, like the
shop page (a quicker write is scored as a script's). The solver and the User-Agent are
loadtests/browser.py's, shared with the locust scenario with bots. Works with any
aiohttp-style client whose ``get``/``post`` take a path
(``aiohttp.test_utils.TestClient``, or ``ClientSession(base_url=...)``), and with the
defences off as well (it then sends no tokens).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from gateway.identity import issue_token
from loadtests.browser import BROWSER_UA, solution

ADMISSION_TIMEOUT_S = 30.0
POLL_S = 0.05


async def _json(resp: Any) -> dict[str, Any]:
    body = await resp.json(content_type=None)
    assert isinstance(body, dict), body
    return body


async def admission(
    client: Any, token: str, *, timeout_s: float = ADMISSION_TIMEOUT_S
) -> str | None:
    """An admission token from the waiting room for the shopper of bearer ``token`` (None
    when the room is off)."""
    headers = {"User-Agent": BROWSER_UA, "Authorization": f"Bearer {token}"}
    resp = await client.post("/queue", headers=headers)
    body = await _json(resp)
    assert resp.status in (200, 201), body
    deadline = time.monotonic() + timeout_s
    while not body["admitted"]:
        assert time.monotonic() < deadline, f"not admitted within {timeout_s} s: {body}"
        await asyncio.sleep(min(POLL_S, max(0.001, float(body["estimated_wait_s"]))))
        resp = await client.get(f"/queue/{body['ticket']}", headers=headers)
        body = await _json(resp)
        assert resp.status == 200, body
    token = body["admission"]
    return None if token is None else str(token)


async def challenge(client: Any) -> tuple[str, float] | None:
    """A solved challenge: the X-Altcha payload and when a write may use it (Unix
    seconds); None when proof of work is off."""
    resp = await client.get("/challenge", headers={"User-Agent": BROWSER_UA})
    if resp.status == 404:
        return None
    body = await _json(resp)
    assert resp.status == 200, body
    found = await asyncio.to_thread(solution, body)
    return found.payload, found.use_after_s


class Shopper:
    """One person: a bearer token, an admission, a fresh solution for every hold."""

    def __init__(self, client: Any, secret: str, user: str) -> None:
        self.client = client
        self.user = user
        self.token = issue_token(secret, user, 3600)
        self.admission: str | None = None

    async def enter(self) -> None:
        """Queue until admitted (the first thing the shop page does)."""
        self.admission = await admission(self.client, self.token)

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What every request of this shopper carries."""
        out = {"User-Agent": BROWSER_UA, "Authorization": f"Bearer {self.token}"}
        if self.admission is not None:
            out["X-Admission"] = self.admission
        out.update(extra or {})
        return out

    async def solved(self) -> dict[str, str]:
        """The X-Altcha header of a freshly solved challenge ({} when the defence is off),
        once the challenge may be used without looking scripted."""
        found = await challenge(self.client)
        if found is None:
            return {}
        payload, use_after = found
        wait = use_after - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        return {"X-Altcha": payload}

    async def hold(self, product_id: str, quantity: int = 1, *, path: str = "/add-to-cart") -> Any:
        """A hold, as the shop page places it: the answer (an aiohttp response)."""
        headers = self.headers(await self.solved())
        body = {"user_id": self.user, "product_id": product_id, "quantity": quantity}
        return await self.client.post(path, json=body, headers=headers)
