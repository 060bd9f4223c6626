"""Per-shopper data keys, stored wrapped in the ``data_keys`` table of the order store.

Theory of operation: a shopper's data key is made the first time something is sealed for
them: a random 256-bit key with a random id, wrapped under the active master key
(``pii.keyring``), inserted with ``ON CONFLICT (user_id) DO NOTHING`` and read back, so
gateways racing on a shopper's first checkout all end up with the one key that won. The
store is the only copy: a gateway never seals with a key that is not stored (durably:
the connection is ``durable=True``). ``get_or_create_many`` does that for a group of
shoppers in one transaction, so a flash sale's stream of new shoppers costs one flushed
commit per group, not per shopper (``pii.keyloader`` forms the groups).

``erase`` is GDPR's crypto-shredding: the row goes (SQLite overwrites it: secure_delete,
then a WAL checkpoint; PostgreSQL vacuums the table), an erasure is recorded, and every
copy of the shopper's sealed data, in the Raft log, journals, dumps, this database and
its backups, can no longer be opened. Remnants of the wrapped key that the database
engine may keep (dead tuples, old WAL, backups) are useless once the master key that
wrapped them is rotated out, which is why ``rotate`` exists besides key hygiene.

``rotate`` re-wraps every data key under the active master key, page by page, each row
with a compare-and-set on its old master key id, so it can run while gateways create
keys and can be resumed after an interruption.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.config import ClusterConfig
from ledger.validation import id_problem
from pii.aead import DataKey, new_data_key_secret, new_key_id
from pii.errors import KeyErased, KeyNotFound, PiiError
from pii.keyring import Keyring
from snapshots.database import Database, DatabaseError, open_database
from snapshots.schema import migrate

log = logging.getLogger("pii.keystore")

ROTATE_PAGE_KEYS = 500  # data keys re-wrapped per transaction by ``rotate``
# Users per ``IN (...)`` lookup: far below SQLite's and PostgreSQL's parameter limits.
LOOKUP_PAGE_USERS = 500


@dataclass(frozen=True, slots=True)
class Erasure:
    user_id: str
    key_ids: tuple[str, ...]  # the data keys destroyed (empty: the shopper had none)
    erased_at_ms: int


@dataclass(frozen=True, slots=True)
class Rotation:
    active_key: str
    rewrapped: int  # data keys moved to the active master key now
    total: int  # data keys stored


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_user(user_id: str) -> None:
    """Raise ``PiiError`` unless ``user_id`` is a valid user id."""
    problem = id_problem("user_id", user_id)
    if problem is not None:
        raise PiiError(problem)


class KeyStore:
    """The data keys of one database."""

    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.db = db
        self.keyring = keyring

    @classmethod
    def open(cls, config: ClusterConfig) -> KeyStore:
        """The data keys of ``config``'s store (``storage.url``), migrated, durable."""
        keyring = Keyring.from_config(config)  # refuses the development key in production
        db = open_database(config.storage.url, durable=True)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        return cls(db, keyring)

    def close(self) -> None:
        self.db.close()

    def _row_key(self, user_id: str, row: tuple[Any, ...]) -> DataKey:
        key_id, master_key_id, wrapped = row
        return self.keyring.unwrap(str(master_key_id), user_id, str(key_id), bytes(wrapped))

    def current(self, user_id: str) -> DataKey | None:
        """The shopper's data key, or None (never had one, or it was erased)."""
        rows = self.db.query(
            "SELECT key_id, master_key_id, wrapped FROM data_keys WHERE user_id = ?", (user_id,)
        )
        return self._row_key(user_id, rows[0]) if rows else None

    def get_or_create(self, user_id: str, now_ms: int | None = None) -> DataKey:
        """The shopper's data key, made and stored first if they have none."""
        return self.get_or_create_many([user_id], now_ms)[user_id]

    def get_or_create_many(
        self, user_ids: Iterable[str], now_ms: int | None = None
    ) -> dict[str, DataKey]:
        """The data keys of the shoppers (by user id), those who have none made and stored
        first, all in one transaction: one durable commit for the whole group."""
        users = list(dict.fromkeys(user_ids))
        for user_id in users:
            check_user(user_id)
        found = self._rows(self.db.query, users)
        missing = [u for u in users if u not in found]
        if missing:
            at = _now_ms() if now_ms is None else now_ms
            rows = []
            for user_id in missing:
                made = DataKey(user_id, new_key_id(), new_data_key_secret())
                master_key_id, wrapped = self.keyring.wrap(made)
                rows.append((user_id, made.key_id, master_key_id, wrapped, at, at))
            with self.db.transaction() as tx:
                tx.executemany(
                    "INSERT INTO data_keys (user_id, key_id, master_key_id, wrapped, "
                    "created_at_ms, wrapped_at_ms) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (user_id) DO NOTHING",
                    rows,
                )
                # Read back, not assume ours: a shopper another gateway created meanwhile
                # keeps the key that won.
                found.update(self._rows(tx.query, missing))
        return {u: self._row_key(u, found[u]) for u in users}

    @staticmethod
    def _rows(
        query: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], users: list[str]
    ) -> dict[str, tuple[Any, ...]]:
        """(key id, master key id, wrapped) of each of ``users`` that has a key."""
        rows: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(users), LOOKUP_PAGE_USERS):
            page = users[start : start + LOOKUP_PAGE_USERS]
            marks = ", ".join("?" * len(page))
            for user_id, *row in query(
                "SELECT user_id, key_id, master_key_id, wrapped FROM data_keys "
                f"WHERE user_id IN ({marks})",
                page,
            ):
                rows[str(user_id)] = tuple(row)
        return rows

    def key_for(self, user_id: str, key_id: str) -> DataKey:
        """The data key ``key_id`` of the shopper; ``KeyErased`` once it was destroyed."""
        rows = self.db.query(
            "SELECT key_id, master_key_id, wrapped FROM data_keys WHERE user_id = ? AND key_id = ?",
            (user_id, key_id),
        )
        if rows:
            return self._row_key(user_id, rows[0])
        erased = self.db.query(
            "SELECT MIN(erased_at_ms) FROM erasures WHERE user_id = ? AND key_id = ?",
            (user_id, key_id),
        )
        if erased and erased[0][0] is not None:
            raise KeyErased(user_id, key_id, int(erased[0][0]))
        raise KeyNotFound(
            f"no data key {key_id} of {user_id!r} in this store, and no erasure of it "
            "recorded: the sealed value comes from elsewhere or was altered"
        )

    def erase(self, user_id: str, now_ms: int | None = None) -> Erasure:
        """Destroy the shopper's data key and record the erasure (crypto-shredding)."""
        check_user(user_id)
        at = _now_ms() if now_ms is None else now_ms
        with self.db.transaction() as tx:
            key_ids = tuple(
                str(r[0])
                for r in tx.query("SELECT key_id FROM data_keys WHERE user_id = ?", (user_id,))
            )
            tx.execute("DELETE FROM data_keys WHERE user_id = ?", (user_id,))
            tx.executemany(
                "INSERT INTO erasures (user_id, key_id, erased_at_ms) VALUES (?, ?, ?)",
                [(user_id, key_id, at) for key_id in key_ids or ("",)],
            )
        self._scrub()
        return Erasure(user_id, key_ids, at)

    def _scrub(self) -> None:
        """Push the deletion out of the engine's caches of old pages (best effort)."""
        try:
            if self.db.dialect == "sqlite":
                self.db.execute_script("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                self.db.execute_script("VACUUM data_keys")
        except DatabaseError as exc:
            log.warning("scrubbing after an erasure failed", extra={"error": str(exc)[:300]})

    def erasures(self, user_id: str) -> list[tuple[str, int]]:
        """(key id, erased at ms) of every erasure of the shopper, oldest first."""
        return [
            (str(k), int(t))
            for k, t in self.db.query(
                "SELECT key_id, erased_at_ms FROM erasures WHERE user_id = ? ORDER BY erasure_id",
                (user_id,),
            )
        ]

    def rotate(self, now_ms: int | None = None, page_keys: int = ROTATE_PAGE_KEYS) -> Rotation:
        """Re-wrap every data key not under the active master key."""
        active = self.keyring.active.key_id
        rewrapped = 0
        while True:
            at = _now_ms() if now_ms is None else now_ms
            with self.db.transaction() as tx:
                rows = tx.query(
                    "SELECT user_id, key_id, master_key_id, wrapped FROM data_keys "
                    "WHERE master_key_id <> ? ORDER BY user_id LIMIT ?",
                    (active, page_keys),
                )
                for user_id, key_id, master_key_id, wrapped in rows:
                    key = self.keyring.unwrap(
                        str(master_key_id), str(user_id), str(key_id), bytes(wrapped)
                    )
                    new_master, new_wrapped = self.keyring.wrap(key)
                    rewrapped += tx.execute(
                        "UPDATE data_keys SET master_key_id = ?, wrapped = ?, wrapped_at_ms = ? "
                        "WHERE user_id = ? AND key_id = ? AND master_key_id = ?",
                        (new_master, new_wrapped, at, user_id, key_id, master_key_id),
                    )
            if len(rows) < page_keys:
                break
        total = int(self.db.query("SELECT COUNT(*) FROM data_keys")[0][0])
        if rewrapped:
            self._scrub()
        return Rotation(active, rewrapped, total)

    def counts_by_master(self) -> dict[str, int]:
        return {
            str(m): int(n)
            for m, n in self.db.query(
                "SELECT master_key_id, COUNT(*) FROM data_keys GROUP BY master_key_id"
            )
        }
