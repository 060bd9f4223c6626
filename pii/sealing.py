"""Sealing a shopper's personal details, and opening them again.

Theory of operation: ``seal_with(key, details)`` is pure: canonical JSON (sorted keys,
so equal details give equal bytes) encrypted under the shopper's data key
(``pii.aead``) and written as ``v1.<key_id>.<user_id>.<payload>`` (``pii.envelope``).
``Sealer`` adds the key lookup for the gateway: the data key comes from the store
(made on the shopper's first checkout) and is kept in a bounded in-memory cache for
``DATA_KEY_CACHE_TTL_S``, so a checkout costs no database round trip in the common case.
The cache is split from the store for the event loop (``pii.keyloader``): ``cached_key``
only looks in memory, ``load`` fetches (or makes) a whole group of keys in one store
transaction; the cache lock is never held while the store is asked.
``Unsealer`` (console, notifier, GDPR export) never caches: it reads the key for each
value, so an erasure takes effect for it at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
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
        self.lookups = 0  # store round trips (the cache missed), one per group loaded
        self._forgotten = 0  # calls of ``forget`` so far

    def key(self, user_id: str) -> DataKey:
        """The shopper's data key: from the cache, else from the store (made if new)."""
        cached = self.cached_key(user_id)
        if cached is not None:
            return cached
        return self.load([user_id])[user_id]

    def cached_key(self, user_id: str) -> DataKey | None:
        """The shopper's data key if the cache holds it, still fresh; never the store."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(user_id)
            if hit is None or now - hit[0] >= self._ttl_s:
                return None
            self._cache.move_to_end(user_id)
            return hit[1]

    def load(self, user_ids: Sequence[str]) -> dict[str, DataKey]:
        """The data keys of ``user_ids`` from the store (made if new, one transaction for
        all), then cached."""
        now = self._clock()
        with self._lock:
            forgotten = self._forgotten
        # The store is asked without the lock: ``cached_key`` runs on the gateway's event
        # loop, which must never wait for a commit.
        keys = self.keys.get_or_create_many(user_ids)
        with self._lock:
            self.lookups += 1
            if forgotten != self._forgotten:
                # A shopper was erased meanwhile: what was read may be their old key,
                # which must not be cached past ``forget``.
                return keys
            for user_id, key in keys.items():
                self._cache[user_id] = (now, key)
                self._cache.move_to_end(user_id)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return keys

    def forget(self, user_id: str) -> None:
        """Drop a cached key (this process erased the shopper)."""
        with self._lock:
            self._cache.pop(user_id, None)
            self._forgotten += 1

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
