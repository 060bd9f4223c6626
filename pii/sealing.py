"""Sealing a shopper's personal details, and opening them again.

Theory of operation: ``seal_with(key, details)`` is pure: canonical JSON (sorted keys,
so equal details give equal bytes) encrypted under the shopper's data key
(``pii.aead``) and written as ``v1.<key_id>.<user_id>.<payload>`` (``pii.envelope``).
``Sealer`` adds the key lookup for the gateway: the data key comes from the store
(made on the shopper's first checkout) and is kept in a bounded in-memory cache for
``DATA_KEY_CACHE_TTL_S``, so a checkout costs no database round trip in the common case.
``Unsealer`` (console, notifier, GDPR export) never caches: it reads the key for each
value, so an erasure takes effect for it at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.limits import MAX_TEXT_LEN
from pii.aead import DataKey
from pii.envelope import Sealed, parse
from pii.errors import MalformedSealed, PiiError
from pii.keystore import KeyStore

DATA_KEY_CACHE_TTL_S = 60.0  # a gateway may seal with a key this long after its erasure
MAX_CACHED_DATA_KEYS = 100_000  # data keys one process keeps in memory (~200 bytes each)


class DetailsTooLarge(PiiError, ValueError):
    """The sealed details would not fit the ledger's text limit."""


def _canonical(details: Mapping[str, object]) -> bytes:
    return json.dumps(
        dict(details), ensure_ascii=False, separators=(",", ":"), sort_keys=True
    ).encode("utf-8")


def seal_with(key: DataKey, details: Mapping[str, object]) -> str:
    """The sealed text of ``details`` under the shopper's data ``key``."""
    text = Sealed(key.key_id, key.user_id, key.encrypt(_canonical(details))).text()
    if len(text) > MAX_TEXT_LEN:
        raise DetailsTooLarge(
            f"sealed details of {len(text)} characters exceed the ledger's {MAX_TEXT_LEN}"
        )
    return text


def open_with(key: DataKey, sealed: Sealed) -> dict[str, Any]:
    """The details inside ``sealed`` (``TamperedError`` when it does not authenticate)."""
    if sealed.key_id != key.key_id or sealed.user_id != key.user_id:
        raise MalformedSealed(
            f"sealed value of {sealed.user_id!r} under {sealed.key_id} is not for key "
            f"{key.key_id} of {key.user_id!r}"
        )
    value = json.loads(key.decrypt(sealed.payload).decode("utf-8"))
    if not isinstance(value, dict):
        raise MalformedSealed("sealed details hold no JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Unsealed:
    user_id: str
    key_id: str
    details: dict[str, Any]


class Sealer:
    """Seals for the gateway, with a bounded cache of data keys (thread-safe)."""

    def __init__(
        self,
        keys: KeyStore,
        *,
        ttl_s: float = DATA_KEY_CACHE_TTL_S,
        capacity: int = MAX_CACHED_DATA_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: expected >= 1")
        self.keys = keys
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, DataKey]] = OrderedDict()
        self._lock = threading.Lock()
        self.lookups = 0  # store round trips (the cache missed)

    def key(self, user_id: str) -> DataKey:
        """The shopper's data key: from the cache, else from the store (made if new)."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(user_id)
            if hit is not None and now - hit[0] < self._ttl_s:
                self._cache.move_to_end(user_id)
                return hit[1]
            key = self.keys.get_or_create(user_id)
            self.lookups += 1
            self._cache[user_id] = (now, key)
            self._cache.move_to_end(user_id)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
            return key

    def forget(self, user_id: str) -> None:
        """Drop a cached key (this process erased the shopper)."""
        with self._lock:
            self._cache.pop(user_id, None)

    def seal(self, user_id: str, details: Mapping[str, object]) -> str:
        return seal_with(self.key(user_id), details)

    def __len__(self) -> int:
        return len(self._cache)


class Unsealer:
    """Opens sealed values with keys read from the store each time (no cache)."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def unseal(self, text: str) -> Unsealed:
        """The details of a sealed value. Raises ``MalformedSealed``, ``KeyErased``
        (the shopper was erased), ``KeyNotFound`` or ``TamperedError``."""
        sealed = parse(text)
        key = self.keys.key_for(sealed.user_id, sealed.key_id)
        return Unsealed(sealed.user_id, sealed.key_id, open_with(key, sealed))
