"""The policy's shared copy in Redis: settings and lists every gateway sees.

Keys (under the cluster's prefix): ``settings`` (a hash), ``list:<name>`` (a set per
list) and ``version`` (a counter raised by every change). A gateway loads them when it
starts and then polls ``version`` every ``REFRESH_S``, reloading only when it moved, so
a change made through any gateway reaches every other one within about a second, and a
restarted gateway starts with what operators set. The cap of a list holds across
gateways because the add is one Lua script (check the size, then add).

When Redis fails, changes still apply to this gateway and are marked unsaved; the next
successful refresh writes this gateway's whole policy back first (the last operator to
act wins), so nothing set during an outage is lost when Redis returns.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.typing import EncodableT

from bots.lists import BotLists
from bots.policy import LISTS, BotPolicy
from bots.settings import SETTINGS, apply_settings, current_settings

log = logging.getLogger("bots.policy_store")

REFRESH_S = 1.0  # how often a gateway looks for changes made through other gateways
STORE_TIMEOUT_S = 1.0  # one operator action or refresh waits this long for Redis

# KEYS: the set, the version. ARGV: entry, cap. 1: added (or present), 0: full.
ADD_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
return 1
"""


def _fields(settings: dict[str, int | float]) -> dict[EncodableT, EncodableT]:
    return {name: repr(value) for name, value in settings.items()}


class PolicyStore:
    """Keeps ``policy`` and ``lists`` in step with Redis under ``prefix``."""

    def __init__(self, redis: Redis, prefix: str, policy: BotPolicy, lists: BotLists) -> None:
        self.redis = redis
        self.prefix = prefix
        self.policy = policy
        self.lists = lists
        self.ok = False  # the last exchange with Redis succeeded
        self.unsaved = False  # changed here while Redis failed
        self._version: str | None = None
        self._add = redis.register_script(ADD_LUA)

    def _list_key(self, name: str) -> str:
        return f"{self.prefix}list:{name}"

    @property
    def _version_key(self) -> str:
        return f"{self.prefix}version"

    @property
    def _settings_key(self) -> str:
        return f"{self.prefix}settings"

    async def refresh(self) -> bool:
        """Push unsaved changes, then load whatever changed; False when Redis failed."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                if self.unsaved:
                    await self._push_all()
                    self.unsaved = False
                version = await self.redis.get(self._version_key)
                if version is None or version != self._version:
                    await self._load()
        except Exception as exc:  # any Redis failure: keep serving the local policy
            self._failed("refresh", exc)
            return False
        self.ok = True
        return True

    async def _load(self) -> None:
        # The version is read in the same transaction as what it versions.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self._version_key)
            pipe.hgetall(self._settings_key)
            for name in LISTS:
                pipe.smembers(self._list_key(name))
            version, settings, *lists = await pipe.execute()
        changes: dict[str, int | float] = {}
        for name, raw in settings.items():
            if name in SETTINGS:
                kind, low, high = SETTINGS[name][:3]
                try:
                    value = kind(float(raw)) if kind is int else float(raw)
                except (ValueError, OverflowError):
                    continue
                # Out of range (or NaN) is someone else's write: keep the current value
                # rather than divide by a zero admission rate on every /queue.
                if low <= value <= high:
                    changes[name] = value
        apply_settings(self.policy, changes)
        for name, members in zip(LISTS, lists, strict=True):
            self.lists.replace(name, sorted(members))
        self._version = version

    async def _push_all(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._settings_key, mapping=_fields(current_settings(self.policy)))
            for name in LISTS:
                pipe.delete(self._list_key(name))
                if self.policy.lists[name]:
                    pipe.sadd(self._list_key(name), *self.policy.lists[name])
            pipe.incr(self._version_key)
            await pipe.execute()

    async def save_settings(self, changes: dict[str, int | float]) -> None:
        """Store settings just applied here."""
        if not changes:
            return
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hset(self._settings_key, mapping=_fields(changes))
                    pipe.incr(self._version_key)
                    await pipe.execute()
        except Exception as exc:
            self._failed("save settings", exc)
            self.unsaved = True
            return
        self.ok = True

    async def add(self, list_name: str, entry: str, cap: int) -> bool:
        """Add an entry just added here; False when the shared list is full."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                added = await self._add(
                    keys=[self._list_key(list_name), self._version_key], args=[entry, cap]
                )
        except Exception as exc:
            self._failed("add to list", exc)
            self.unsaved = True
            return True
        self.ok = True
        return bool(int(added))

    async def remove(self, list_name: str, entry: str) -> None:
        """Remove an entry just removed here."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.srem(self._list_key(list_name), entry)
                    pipe.incr(self._version_key)
                    await pipe.execute()
        except Exception as exc:
            self._failed("remove from list", exc)
            self.unsaved = True
            return
        self.ok = True

    def _failed(self, action: str, exc: Exception) -> None:
        if self.ok:
            log.warning(
                "redis failed: bot settings and lists kept locally",
                extra={"action": action, "error": type(exc).__name__},
            )
        self.ok = False
