"""The outbox: every notification recorded before it is sent, with the feed position.

Theory of operation: ``apply_page`` opens one SQLite transaction, reads the feed position,
applies the effects (``notifier.notices``) of the page's events above it (remembering
products, orders, contacts and interest, and inserting one outbox row per notice,
channel and address) and moves the position to the page's ``last_index``, then commits.
Rows and position commit together or not at all: a notifier killed at any instant
restarts from the last committed position, so no notice is lost (its event is read
again) and none is recorded twice (the events at or below the position are skipped,
and a row's id, ``<index>:<seq>:<channel>:<address hash>``, is its primary key).

Deduplication: a row whose ``dedupe_key`` (notice, order or product, channel, address)
matches a live row (pending, sending or sent) is recorded as ``deduped`` and never sent:
an order notice is sent once per address, a stock notice once per product, kind and
address within ``stock_window_ms`` of ledger time (a product flapping between sold out
and back does not flood its subscribers). Rows are kept ``dedupe_window`` long.

Sending (``notifier.sender``) claims a due row (``sending``, one more attempt), sends,
and marks it ``sent``, ``pending`` again with a later ``next_attempt_ms``, or ``failed``.
A row still ``sending`` when the process died is made ``pending`` again at start
(``recover``): it is sent again with the same Message-ID / Idempotency-Key.

Contact details are stored sealed only; address hashes (HMAC, ``notifier.contacts``) let
the outbox deduplicate and join without an address in clear. One process owns an outbox
at a time: ``open`` takes an exclusive lock on ``<outbox>.lock``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from notifier.contacts import Channel, Contact, hashes_of
from notifier.notices import (
    ClearInterest,
    Effect,
    ForgetOrder,
    NoteInterest,
    Notice,
    NotifyOrder,
    NotifyStock,
    Queue,
    RememberOrder,
    RememberProduct,
    effects_of,
    queue_of,
)
from pii.errors import KeyErased, KeyNotFound, MalformedSealed, TamperedError
from snapshots.database import SqliteDatabase, Tx
from snapshots.store import FeedPage

MAX_SUBSCRIPTIONS_PER_USER = 100  # products one shopper may follow at once
MAX_LAST_ERROR_CHARS = 300
# A sealed value that cannot be opened (erased shopper, foreign or altered value): the
# notice has no address, which is recorded, not retried.
UNREADABLE = (KeyErased, KeyNotFound, MalformedSealed, TamperedError)

Unseal = Callable[[str], Contact]

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY,
        dedupe_key TEXT NOT NULL,
        queue INTEGER NOT NULL,
        channel TEXT NOT NULL,
        notice TEXT NOT NULL,
        user_id TEXT NOT NULL,
        sealed TEXT NOT NULL,
        addr_hash TEXT NOT NULL,
        params TEXT NOT NULL,
        event_at_ms INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        sent_at_ms INTEGER,
        provider_ref TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, queue, status, next_attempt_ms)",
    "CREATE INDEX IF NOT EXISTS outbox_dedupe ON outbox (dedupe_key, event_at_ms)",
    "CREATE INDEX IF NOT EXISTS outbox_user ON outbox (user_id, status)",
    "CREATE INDEX IF NOT EXISTS outbox_age ON outbox (created_at_ms)",
    """CREATE TABLE IF NOT EXISTS contacts (
        user_id TEXT PRIMARY KEY, sealed TEXT NOT NULL, email_hash TEXT NOT NULL,
        phone_hash TEXT NOT NULL, updated_at_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS subscriptions (
        product_id TEXT NOT NULL, user_id TEXT NOT NULL, sealed TEXT NOT NULL,
        email_hash TEXT NOT NULL, phone_hash TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (product_id, user_id))""",
    "CREATE INDEX IF NOT EXISTS subscriptions_user ON subscriptions (user_id)",
    """CREATE TABLE IF NOT EXISTS interest (
        product_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (product_id, user_id))""",
    """CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, sealed TEXT NOT NULL,
        email_hash TEXT NOT NULL, phone_hash TEXT NOT NULL, params TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS products (product_id TEXT PRIMARY KEY, name TEXT NOT NULL)",
)


class Status(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # given up: a permanent refusal or too many attempts
    DEDUPED = "deduped"  # the same notice already went to this address
    ERASED = "erased"  # the shopper's data was erased before it could be sent
    STALE = "stale"  # its event is older than stale_after: recorded, never sent


LIVE = (Status.PENDING.value, Status.SENDING.value, Status.SENT.value)


class OutboxBusy(RuntimeError):
    """Another process holds this outbox."""


class TooManySubscriptions(ValueError):
    """A shopper already follows ``MAX_SUBSCRIPTIONS_PER_USER`` products."""


@dataclass(frozen=True, slots=True)
class Row:
    """One notification to send."""

    id: str
    channel: Channel
    queue: Queue
    notice: Notice
    user_id: str
    sealed: str
    addr_hash: str
    params: dict[str, Any]
    event_at_ms: int
    attempts: int


@dataclass(slots=True)
class PageApplied:
    """What one ``apply_page`` did."""

    before_index: int
    index: int = 0
    at_ms: int = 0
    events: int = 0
    enqueued: dict[tuple[Channel, Queue], int] = field(default_factory=dict)
    deduped: int = 0
    no_contact: int = 0  # recipients without a readable address for any enabled channel
    rebuilt_from: int | None = None  # a ledger snapshot's index (events before it missed)


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Outbox:
    """The notifier's SQLite database (one connection; calls from one thread at a time)."""

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        hash_key: bytes,
        channels: Iterable[Channel],
        stock_window_ms: int,
        lock_fd: int | None = None,
    ) -> None:
        self.db = db
        self.hash_key = hash_key
        self.channels = tuple(c for c in Channel if c in set(channels))
        self.stock_window_ms = stock_window_ms
        self._lock_fd = lock_fd

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        hash_key: bytes,
        channels: Iterable[Channel],
        stock_window_ms: int,
    ) -> Outbox:
        """Open (creating if needed) the outbox at ``path``; ``OutboxBusy`` when another
        process has it open."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxBusy(f"{path} is in use by another notifier process") from None
        try:
            db = SqliteDatabase(path, durable=True)
            with db.transaction() as tx:
                for statement in SCHEMA:
                    tx.execute(statement)
        except BaseException:
            os.close(fd)
            raise
        return cls(
            db,
            hash_key=hash_key,
            channels=channels,
            stock_window_ms=stock_window_ms,
            lock_fd=fd,
        )

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the feed ---------------------------------------------------------------------

    def position(self) -> int:
        """The last feed index applied (0 before the first page)."""
        return _meta(self.db.query("SELECT value FROM meta WHERE key = 'feed_index'"))

    def apply_page(self, page: FeedPage, unseal: Unseal, now_ms: int) -> PageApplied:
        """Apply a feed page (fetched from ``position()``) in one transaction."""
        with self.db.transaction() as tx:
            floor = _meta(tx.query("SELECT value FROM meta WHERE key = 'feed_index'"))
            at_ms = _meta(tx.query("SELECT value FROM meta WHERE key = 'feed_at_ms'"))
            done = PageApplied(before_index=floor, index=floor, at_ms=at_ms)
            snapshot = page.snapshot
            if snapshot is not None and _int(snapshot.get("index")) > floor:
                floor = self._rebuild(tx, snapshot, unseal, done)
                at_ms = max(at_ms, _int(snapshot.get("at_ms")))
            for event in page.events:
                index = _int(event.get("index"))
                if index <= floor:
                    continue
                at_ms = max(at_ms, _int(event.get("at_ms")))
                done.events += 1
                for effect in effects_of(event):
                    self._apply(tx, effect, event, unseal, now_ms, done)
            done.index = max(floor, page.last_index)
            done.at_ms = at_ms
            tx.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [("feed_index", done.index), ("feed_at_ms", at_ms)],
            )
        return done

    def _apply(
        self,
        tx: Tx,
        effect: Effect,
        event: Mapping[str, Any],
        unseal: Unseal,
        now_ms: int,
        done: PageApplied,
    ) -> None:
        if isinstance(effect, RememberProduct):
            tx.execute(
                "INSERT INTO products (product_id, name) VALUES (?, ?) "
                "ON CONFLICT (product_id) DO UPDATE SET name = excluded.name",
                (effect.product_id, effect.name),
            )
        elif isinstance(effect, RememberOrder):
            self._remember_order(tx, effect, unseal, now_ms, done)
        elif isinstance(effect, NotifyOrder):
            self._notify_order(tx, effect, event, now_ms, done)
        elif isinstance(effect, ForgetOrder):
            tx.execute("DELETE FROM orders WHERE order_id = ?", (effect.order_id,))
        elif isinstance(effect, NoteInterest):
            tx.execute(
                "INSERT INTO interest (product_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (effect.product_id, effect.user_id),
            )
        elif isinstance(effect, NotifyStock):
            self._notify_stock(tx, effect, event, now_ms, done)
        elif isinstance(effect, ClearInterest):
            tx.execute("DELETE FROM interest WHERE product_id = ?", (effect.product_id,))

    def _hashes(self, sealed: str, unseal: Unseal) -> dict[Channel, str]:
        if not sealed:
            return {}
        try:
            return hashes_of(self.hash_key, unseal(sealed))
        except UNREADABLE:
            return {}

    def _remember_order(
        self, tx: Tx, o: RememberOrder, unseal: Unseal, now_ms: int, done: PageApplied
    ) -> None:
        hashes = self._hashes(o.sealed_details, unseal)
        names = dict(
            tx.query(
                "SELECT product_id, name FROM products WHERE product_id IN "
                f"({', '.join('?' for _ in o.lines) or 'NULL'})",
                [line[0] for line in o.lines],
            )
        )
        params = {
            "order_id": o.order_id,
            "amount_minor": o.amount_minor,
            "currency": o.currency,
            "pay_by_ms": o.pay_by_ms,
            "lines": [[pid, names.get(pid, pid), q, unit] for pid, q, unit in o.lines],
        }
        email, phone = hashes.get(Channel.EMAIL, ""), hashes.get(Channel.SMS, "")
        tx.execute(
            "INSERT INTO orders (order_id, user_id, sealed, email_hash, phone_hash, params) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
            (o.order_id, o.user_id, o.sealed_details, email, phone, _json(params)),
        )
        if hashes:
            # The shopper's latest details: where their stock notices go without a
            # subscription of their own.
            tx.execute(
                "INSERT INTO contacts (user_id, sealed, email_hash, phone_hash, updated_at_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
                "sealed = excluded.sealed, email_hash = excluded.email_hash, "
                "phone_hash = excluded.phone_hash, updated_at_ms = excluded.updated_at_ms",
                (o.user_id, o.sealed_details, email, phone, now_ms),
            )

    def _notify_order(
        self, tx: Tx, n: NotifyOrder, event: Mapping[str, Any], now_ms: int, done: PageApplied
    ) -> None:
        rows = tx.query(
            "SELECT user_id, sealed, email_hash, phone_hash, params FROM orders WHERE order_id = ?",
            (n.order_id,),
        )
        if not rows:
            return  # placed before this outbox's history (or in a gap): nothing to say
        user_id, sealed, email, phone, raw = rows[0]
        params = {**json.loads(raw), **n.extra}
        self._enqueue(
            tx,
            n.notice,
            event,
            [(str(user_id), str(sealed), str(email), str(phone))],
            params,
            f"{n.notice.value}:{n.order_id}",
            None,
            now_ms,
            done,
        )

    def _notify_stock(
        self, tx: Tx, n: NotifyStock, event: Mapping[str, Any], now_ms: int, done: PageApplied
    ) -> None:
        interested = (
            "SELECT user_id FROM interest WHERE product_id = ? UNION "
            if n.notice is Notice.SOLD_OUT
            else ""
        )
        args: list[str] = [n.product_id] * (3 if interested else 2)
        recipients = tx.query(
            "SELECT u.user_id, "
            "CASE WHEN s.user_id IS NULL THEN c.sealed ELSE s.sealed END, "
            "CASE WHEN s.user_id IS NULL THEN c.email_hash ELSE s.email_hash END, "
            "CASE WHEN s.user_id IS NULL THEN c.phone_hash ELSE s.phone_hash END "
            f"FROM ({interested}SELECT user_id FROM subscriptions WHERE product_id = ?) u "
            "LEFT JOIN subscriptions s ON s.product_id = ? AND s.user_id = u.user_id "
            "LEFT JOIN contacts c ON c.user_id = u.user_id ORDER BY u.user_id",
            args,
        )
        named = tx.query("SELECT name FROM products WHERE product_id = ?", (n.product_id,))
        params = {
            "product_id": n.product_id,
            "product_name": str(named[0][0]) if named else n.product_id,
        }
        self._enqueue(
            tx,
            n.notice,
            event,
            [(str(u), str(s or ""), str(e or ""), str(p or "")) for u, s, e, p in recipients],
            params,
            f"{n.notice.value}:{n.product_id}",
            self.stock_window_ms,
            now_ms,
            done,
        )

    def _enqueue(
        self,
        tx: Tx,
        notice: Notice,
        event: Mapping[str, Any],
        recipients: list[tuple[str, str, str, str]],
        params: dict[str, Any],
        dedupe_prefix: str,
        window_ms: int | None,
        now_ms: int,
        done: PageApplied,
    ) -> None:
        index, seq, at_ms = (
            _int(event.get("index")),
            _int(event.get("seq")),
            _int(event.get("at_ms")),
        )
        queue = queue_of(notice)
        raw_params = _json(params)
        since = at_ms - window_ms if window_ms is not None else None
        rows: list[tuple[object, ...]] = []
        ids: set[str] = set()
        for user_id, sealed, email_hash, phone_hash in recipients:
            hashes = {Channel.EMAIL: email_hash, Channel.SMS: phone_hash}
            reachable = [c for c in self.channels if hashes[c] and sealed]
            if not reachable:
                done.no_contact += 1
                continue
            for channel in reachable:
                addr = hashes[channel]
                row_id = f"{index}:{seq}:{channel.value}:{addr}"
                if row_id in ids:
                    continue  # two shoppers sharing an address: one notice
                ids.add(row_id)
                dedupe_key = f"{dedupe_prefix}:{channel.value}:{addr}"
                status = Status.PENDING
                if self._already(tx, dedupe_key, since):
                    status = Status.DEDUPED
                    done.deduped += 1
                else:
                    done.enqueued[(channel, queue)] = done.enqueued.get((channel, queue), 0) + 1
                rows.append(
                    (
                        row_id,
                        dedupe_key,
                        int(queue),
                        channel.value,
                        notice.value,
                        user_id,
                        sealed,
                        addr,
                        raw_params,
                        at_ms,
                        now_ms,
                        status.value,
                        now_ms,
                    )
                )
        # Rows of one event never dedupe each other (equal keys mean equal ids), so they
        # can go in together; the next event's checks see them.
        _insert(tx, rows)

    def _already(self, tx: Tx, dedupe_key: str, since_ms: int | None) -> bool:
        sql = (
            "SELECT 1 FROM outbox WHERE dedupe_key = ? AND status IN (?, ?, ?)"
            + ("" if since_ms is None else " AND event_at_ms > ?")
            + " LIMIT 1"
        )
        args: list[object] = [dedupe_key, *LIVE]
        if since_ms is not None:
            args.append(since_ms)
        return bool(tx.query(sql, args))

    def _rebuild(
        self, tx: Tx, snapshot: Mapping[str, Any], unseal: Unseal, done: PageApplied
    ) -> int:
        """Catch up from a ledger snapshot: the events between the position and it are
        gone (the notifier fell behind the feed's retention). Products and pending orders
        are taken from it, so later events still find them; notices of the gap are not
        sent (counted as a gap)."""
        index = int(snapshot["index"])
        for p in snapshot.get("products") or []:
            if isinstance(p, dict) and isinstance(p.get("product_id"), str):
                self._apply(
                    tx,
                    RememberProduct(p["product_id"], str(p.get("name") or p["product_id"])),
                    {},
                    unseal,
                    0,
                    done,
                )
        pending = {
            o["order_id"]: o
            for o in snapshot.get("orders") or []
            if isinstance(o, dict) and o.get("status") == "pending" and "order_id" in o
        }
        known = {str(r[0]) for r in tx.query("SELECT order_id FROM orders")}
        gone = sorted(known - set(pending))
        tx.executemany("DELETE FROM orders WHERE order_id = ?", [(g,) for g in gone])
        for order_id, o in pending.items():
            if order_id in known:
                continue
            for effect in effects_of(
                {
                    "kind": "order_placed",
                    "order_id": order_id,
                    "user_id": o.get("user_id"),
                    "data": o,
                }
            ):
                if isinstance(effect, RememberOrder):
                    self._remember_order(tx, effect, unseal, 0, done)
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('gaps', 1) "
            "ON CONFLICT (key) DO UPDATE SET value = value + 1"
        )
        done.rebuilt_from = index
        return index

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(
        self, product_id: str, user_id: str, sealed: str, contact: Contact, now_ms: int
    ) -> list[Channel]:
        """Record (or replace) a subscription; the channels it can be reached on."""
        hashes = hashes_of(self.hash_key, contact)
        with self.db.transaction() as tx:
            count = _meta(
                tx.query(
                    "SELECT COUNT(*) FROM subscriptions WHERE user_id = ? AND product_id <> ?",
                    (user_id, product_id),
                )
            )
            if count >= MAX_SUBSCRIPTIONS_PER_USER:
                raise TooManySubscriptions(
                    f"{user_id!r} already follows {count} products "
                    f"(at most {MAX_SUBSCRIPTIONS_PER_USER})"
                )
            tx.execute(
                "INSERT INTO subscriptions (product_id, user_id, sealed, email_hash, phone_hash, "
                "created_at_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (product_id, user_id) "
                "DO UPDATE SET sealed = excluded.sealed, email_hash = excluded.email_hash, "
                "phone_hash = excluded.phone_hash",
                (
                    product_id,
                    user_id,
                    sealed,
                    hashes.get(Channel.EMAIL, ""),
                    hashes.get(Channel.SMS, ""),
                    now_ms,
                ),
            )
        return [c for c in Channel if c in hashes]

    def unsubscribe(self, product_id: str, user_id: str) -> bool:
        with self.db.transaction() as tx:
            return (
                tx.execute(
                    "DELETE FROM subscriptions WHERE product_id = ? AND user_id = ?",
                    (product_id, user_id),
                )
                > 0
            )

    # -- sending ----------------------------------------------------------------------

    def recover(self, now_ms: int) -> int:
        """Rows left ``sending`` by a process that died: due again now. Their count."""
        with self.db.transaction() as tx:
            return tx.execute(
                "UPDATE outbox SET status = ?, next_attempt_ms = ? WHERE status = ?",
                (Status.PENDING.value, now_ms, Status.SENDING.value),
            )

    def next_due_ms(self, channel: Channel, queue: Queue) -> int | None:
        """When the earliest pending row of a queue is due (None: nothing pending)."""
        rows = self.db.query(
            "SELECT MIN(next_attempt_ms) FROM outbox WHERE channel = ? AND queue = ? "
            "AND status = ?",
            (channel.value, int(queue), Status.PENDING.value),
        )
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def claim(
        self, channel: Channel, queue: Queue, now_ms: int, stale_before_ms: int
    ) -> tuple[Row | None, int]:
        """The next due row of a queue, marked ``sending`` with one more attempt (None:
        nothing due), and how many rows were found stale on the way."""
        stale = 0
        with self.db.transaction() as tx:
            while True:
                found = tx.query(
                    "SELECT id, notice, user_id, sealed, addr_hash, params, event_at_ms, "
                    "attempts FROM outbox WHERE channel = ? AND queue = ? AND status = ? "
                    "AND next_attempt_ms <= ? ORDER BY next_attempt_ms, rowid LIMIT 1",
                    (channel.value, int(queue), Status.PENDING.value, now_ms),
                )
                if not found:
                    return None, stale
                row_id, notice, user_id, sealed, addr, params, event_at_ms, attempts = found[0]
                if int(event_at_ms) < stale_before_ms:
                    tx.execute(
                        "UPDATE outbox SET status = ? WHERE id = ?", (Status.STALE.value, row_id)
                    )
                    stale += 1
                    continue
                tx.execute(
                    "UPDATE outbox SET status = ?, attempts = attempts + 1 WHERE id = ?",
                    (Status.SENDING.value, row_id),
                )
                return (
                    Row(
                        id=str(row_id),
                        channel=channel,
                        queue=queue,
                        notice=Notice(notice),
                        user_id=str(user_id),
                        sealed=str(sealed),
                        addr_hash=str(addr),
                        params=json.loads(params),
                        event_at_ms=int(event_at_ms),
                        attempts=int(attempts) + 1,
                    ),
                    stale,
                )

    def mark_sent(self, row_id: str, now_ms: int, provider_ref: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET status = ?, sent_at_ms = ?, provider_ref = ?, last_error = '' "
                "WHERE id = ?",
                (Status.SENT.value, now_ms, provider_ref[:MAX_LAST_ERROR_CHARS], row_id),
            )

    def mark_retry(self, row_id: str, next_attempt_ms: int, error: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET status = ?, next_attempt_ms = ?, last_error = ? WHERE id = ?",
                (Status.PENDING.value, next_attempt_ms, error[:MAX_LAST_ERROR_CHARS], row_id),
            )

    def mark_failed(self, row_id: str, error: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET status = ?, last_error = ? WHERE id = ?",
                (Status.FAILED.value, error[:MAX_LAST_ERROR_CHARS], row_id),
            )

    def forget_user(self, user_id: str) -> int:
        """The shopper's data was erased: drop what the outbox holds of them (sealed
        details, address hashes) and mark their unsent rows ``erased``. Rows changed."""
        with self.db.transaction() as tx:
            for table in ("contacts", "subscriptions", "interest"):
                tx.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            tx.execute(
                "UPDATE orders SET sealed = '', email_hash = '', phone_hash = '' WHERE user_id = ?",
                (user_id,),
            )
            return tx.execute(
                "UPDATE outbox SET status = ?, sealed = '' WHERE user_id = ? AND status IN (?, ?)",
                (Status.ERASED.value, user_id, Status.PENDING.value, Status.SENDING.value),
            )

    # -- housekeeping -----------------------------------------------------------------

    def prune(self, before_ms: int) -> int:
        """Delete finished rows created before ``before_ms`` (the dedupe window ended)."""
        with self.db.transaction() as tx:
            return tx.execute(
                "DELETE FROM outbox WHERE created_at_ms < ? AND status NOT IN (?, ?)",
                (before_ms, Status.PENDING.value, Status.SENDING.value),
            )

    def summary(self) -> dict[str, Any]:
        """Position, rows by status, pending rows by channel and queue, sent rows by
        channel, subscriptions."""
        by_status = {
            str(s): int(n)
            for s, n in self.db.query("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        }
        pending = {
            f"{c}/{Queue(int(q)).name.lower()}": int(n)
            for c, q, n in self.db.query(
                "SELECT channel, queue, COUNT(*) FROM outbox WHERE status IN (?, ?) "
                "GROUP BY channel, queue",
                (Status.PENDING.value, Status.SENDING.value),
            )
        }
        sent = {
            str(c): int(n)
            for c, n in self.db.query(
                "SELECT channel, COUNT(*) FROM outbox WHERE status = ? GROUP BY channel",
                (Status.SENT.value,),
            )
        }
        meta = dict(self.db.query("SELECT key, value FROM meta"))
        return {
            "feed_index": int(meta.get("feed_index", 0)),
            "feed_at_ms": int(meta.get("feed_at_ms", 0)),
            "gaps": int(meta.get("gaps", 0)),
            "rows": by_status,
            "pending": pending,
            "sent": sent,
            "subscriptions": _meta(self.db.query("SELECT COUNT(*) FROM subscriptions")),
            "channels": [c.value for c in self.channels],
        }


def _insert(tx: Tx, rows: list[tuple[object, ...]]) -> None:
    tx.executemany(
        "INSERT INTO outbox (id, dedupe_key, queue, channel, notice, user_id, sealed, "
        "addr_hash, params, event_at_ms, created_at_ms, status, next_attempt_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        rows,
    )


def _meta(rows: list[tuple[Any, ...]]) -> int:
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
