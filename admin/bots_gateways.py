"""The gateways' internal bots API as the console and ``flashsale bots`` call it.

``GET /internal/bots``, ``PUT /internal/bots/settings`` and ``POST /internal/bots/lists``
on each gateway's listen address, with the internal token of the cluster secret. Every
call answers a ``GatewayAnswer``: the gateway's full document, or a one-line reason
(unreachable, refused, an older gateway without the API) — never an exception, so one
gateway's trouble never stops the others' changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from admin.bots_values import Number
from cluster.auth import internal_token
from cluster.config import ClusterConfig, GatewayConfig

BOTS_PATH = "/internal/bots"


@dataclass(frozen=True, slots=True)
class GatewayAnswer:
    gateway: str
    doc: dict[str, Any] | None  # the full document, when the call succeeded
    error: str | None = None
    status: int | None = None  # the HTTP status when the gateway answered

    @property
    def ok(self) -> bool:
        return self.doc is not None

    @property
    def reached(self) -> bool:
        return self.status is not None


class BotsApi:
    """Calls to every gateway of a config, over one HTTP session."""

    def __init__(self, config: ClusterConfig, http: aiohttp.ClientSession) -> None:
        self._config = config
        self._http = http
        self._headers = {"Authorization": f"Bearer {internal_token(config.secret)}"}

    @property
    def gateways(self) -> tuple[GatewayConfig, ...]:
        return tuple(self._config.gateways)

    async def _call(
        self,
        gateway: GatewayConfig,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        timeout_s: float,
    ) -> GatewayAnswer:
        url = f"{gateway.listen.url}{path}"
        try:
            async with self._http.request(
                method,
                url,
                json=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            return GatewayAnswer(gateway.id, None, f"unreachable ({type(exc).__name__})")
        return GatewayAnswer(gateway.id, *_read(status, text), status)

    async def fetch(self, gateway: GatewayConfig, timeout_s: float) -> GatewayAnswer:
        return await self._call(gateway, "GET", BOTS_PATH, None, timeout_s)

    async def put_settings(
        self, gateway: GatewayConfig, settings: Mapping[str, Number], timeout_s: float
    ) -> GatewayAnswer:
        return await self._call(gateway, "PUT", f"{BOTS_PATH}/settings", settings, timeout_s)

    async def change_list(
        self, gateway: GatewayConfig, list_: str, op: str, value: str, timeout_s: float
    ) -> GatewayAnswer:
        body = {"list": list_, "op": op, "value": value}
        return await self._call(gateway, "POST", f"{BOTS_PATH}/lists", body, timeout_s)

    async def fetch_all(self, timeout_s: float) -> list[GatewayAnswer]:
        return list(await asyncio.gather(*(self.fetch(g, timeout_s) for g in self.gateways)))

    async def put_settings_all(
        self, settings: Mapping[str, Number], timeout_s: float
    ) -> list[GatewayAnswer]:
        return list(
            await asyncio.gather(
                *(self.put_settings(g, settings, timeout_s) for g in self.gateways)
            )
        )

    async def change_list_all(
        self, list_: str, op: str, value: str, timeout_s: float
    ) -> list[GatewayAnswer]:
        return list(
            await asyncio.gather(
                *(self.change_list(g, list_, op, value, timeout_s) for g in self.gateways)
            )
        )


def _read(status: int, text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if status == 200 and isinstance(body, dict):
        return body, None
    if status == 404:
        return None, "no bots API here (404): a gateway older than the bot defences?"
    if status == 401:
        return None, "refused the internal token (401): is [cluster] secret the same?"
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or "")
    return None, f"HTTP {status}{': ' + detail if detail else ''}"


def outcome_text(answers: list[GatewayAnswer]) -> str:
    """One line for the operator: where a change applied and where it did not (yet)."""
    done = [a.gateway for a in answers if a.ok]
    parts = []
    if done:
        parts.append(f"applied on {', '.join(done)}")
    for a in answers:
        if not a.ok:
            parts.append(f"{a.gateway}: {a.error}")
    return "; ".join(parts) or "no gateways configured"
