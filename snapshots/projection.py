"""From ledger events to table rows: the pure core of the snapshot writer.

Theory of operation: ``project_events`` folds a batch of events (in feed order) into
``Changes``: per table, the rows to write, keyed by primary key. A row is either *whole*
(the event knows every column, like a new order: written as an upsert) or a *patch* (some
columns, like an order's new status: written as an UPDATE of an existing row). Folding
merges what a batch says about one row, in order: a patch after a whole row updates the
whole row, a whole row replaces anything before it, patches merge. So each row is
written once per batch however many events touch it, and the shell sends the rows of a
table in a few statements: many events per transaction, few round trips.
``stock_moves`` is append-only: one journal row per move.

``project_snapshot`` does the same for a ledger snapshot (``Ledger.snapshot_view``), the
state a writer that fell behind the feed's retention restarts from. Nothing here reads a
database or a clock: the store (``snapshots.store``) applies ``Changes`` in one
transaction with the applied index.

Personal data: an order's ``sealed_details`` is stored only when it is a sealed value
(``pii.envelope``); anything else (an unsealed legacy text) is dropped, never written in
clear, and counted in ``Changes.unsealed_dropped``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger.codec import decode_view
from ledger.events import Bucket, EventKind
from ledger.views import (
    HoldView,
    OrderLine,
    OrderStatus,
    OrderView,
    PaymentStatus,
    ProductView,
)
from pii.envelope import key_id_of

Value = None | int | str
Row = dict[str, Value]
Key = tuple[Value, ...]

# Primary key columns of every table the writer fills.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "inventory": ("product_id",),
    "orders": ("order_id",),
    "order_lines": ("order_id", "line_no"),
    "cart": ("hold_id",),
    "payment": ("payment_id",),
    "stock_moves": ("ledger_index", "seq", "move_no"),
}
SNAPSHOT_SEQ = -1  # stock_moves.seq of the adjustment made by a rebuild from a snapshot

_PAYMENT_OF_ORDER = {
    PaymentStatus.PENDING: "pending",
    PaymentStatus.PAID: "completed",
    PaymentStatus.FAILED: "failed",
}
_HOLD_ENDS = {EventKind.HOLD_RELEASED.value: "released", EventKind.HOLD_EXPIRED.value: "expired"}
# (order_status, orders.payment_status, payment.payment_status) after the event
_ORDER_ENDS = {
    EventKind.ORDER_COMPLETED.value: ("completed", "paid", "completed"),
    EventKind.ORDER_FAILED.value: ("failed", "failed", "failed"),
    EventKind.ORDER_EXPIRED.value: ("failed", "failed", "failed"),
}


def payment_id_of(order_id: str) -> str:
    """The payment row of an order (one per order: the payment it awaits or got)."""
    return "pay-" + order_id


@dataclass
class Changes:
    """What a batch of events (or a snapshot) writes, merged per row."""

    whole: dict[str, dict[Key, Row]] = field(default_factory=dict)
    patches: dict[str, dict[Key, Row]] = field(default_factory=dict)
    moves: list[Row] = field(default_factory=list)
    events: int = 0
    last_index: int = 0
    last_at_ms: int = 0
    unsealed_dropped: int = 0

    def put(self, table: str, row: Row) -> None:
        """A whole row: replaces whatever this batch said before about its key."""
        key = tuple(row[c] for c in TABLE_KEYS[table])
        patches = self.patches.get(table)
        if patches is not None:
            patches.pop(key, None)
        self.whole.setdefault(table, {})[key] = row

    def patch(self, table: str, key: Key, columns: Row) -> None:
        """Some columns of an existing row."""
        whole = self.whole.get(table)
        if whole is not None and key in whole:
            whole[key].update(columns)
            return
        pending = self.patches.setdefault(table, {})
        if key in pending:
            pending[key].update(columns)
        else:
            row = dict(zip(TABLE_KEYS[table], key, strict=True))
            row.update(columns)
            pending[key] = row


def inventory_row(p: ProductView, index: int) -> Row:
    return {
        "product_id": p.product_id,
        "product_name": p.name,
        "available_quantity": p.available,
        "reserved_quantity": p.reserved,
        "sold_quantity": p.sold,
        "total_stock": p.total_stock,
        "price_minor": p.price_minor,
        "currency": p.currency,
        "opens_at_ms": p.opens_at_ms,
        "closes_at_ms": p.closes_at_ms,
        "per_user_limit": p.per_user_limit,
        "hold_ttl_ms": p.hold_ttl_ms,
        "last_updated_ms": p.updated_at_ms,
        "ledger_index": index,
    }


def _sealed_columns(sealed: str, changes: Changes) -> Row:
    key_id = key_id_of(sealed) if sealed else None
    if sealed and key_id is None:
        changes.unsealed_dropped += 1
        return {"pii_sealed": None, "pii_key_id": None}
    return {"pii_sealed": sealed or None, "pii_key_id": key_id}


def _put_order(
    changes: Changes,
    o: OrderView,
    index: int,
    updated_at_ms: int,
    payment_updated_at_ms: int,
) -> None:
    changes.put(
        "orders",
        {
            "order_id": o.order_id,
            "user_id": o.user_id,
            "cart_id": o.cart_id,
            "order_status": o.status.value,
            "payment_status": o.payment_status.value,
            "amount_minor": o.amount_minor,
            "currency": o.currency,
            "payment_method": o.payment_method,
            "failure": o.failure,
            "created_at_ms": o.created_at_ms,
            "pay_by_ms": o.pay_by_ms,
            "updated_at_ms": updated_at_ms,
            **_sealed_columns(o.sealed_details, changes),
            "ledger_index": index,
        },
    )
    for line_no, line in enumerate(o.lines, start=1):
        changes.put(
            "order_lines",
            {
                "order_id": o.order_id,
                "line_no": line_no,
                "product_id": line.product_id,
                "quantity": line.quantity,
                "unit_price_minor": line.unit_price_minor,
                "hold_id": line.hold_id,
                "ledger_index": index,
            },
        )
    # Every attempt but the one that ended the order (paid or failed for good) was declined.
    ended_by_payment = o.status is not OrderStatus.PENDING and o.failure != "expired"
    payment: Row = {
        "payment_id": payment_id_of(o.order_id),
        "order_id": o.order_id,
        "user_id": o.user_id,
        "payment_method": o.payment_method,
        "provider": o.provider,
        "transaction_id": o.transaction_id,
        "amount_minor": o.amount_minor,
        "currency": o.currency,
        "payment_status": _PAYMENT_OF_ORDER[o.payment_status],
        "declined_attempts": o.payment_attempts - (1 if ended_by_payment else 0),
        "failure": o.failure,
        "created_at_ms": o.created_at_ms,
        "updated_at_ms": payment_updated_at_ms,
        "ledger_index": index,
    }
    changes.put("payment", payment)


def _cart_row(h: HoldView, index: int, updated_at_ms: int, order_id: str | None) -> Row:
    return {
        "hold_id": h.hold_id,
        "cart_id": h.cart_id,
        "user_id": h.user_id,
        "product_id": h.product_id,
        "quantity": h.quantity,
        "cart_expiry_ms": h.expires_at_ms,
        "status": h.status.value,
        "order_id": order_id,
        "created_at_ms": h.created_at_ms,
        "updated_at_ms": updated_at_ms,
        "ledger_index": index,
    }


class MalformedEvent(ValueError):
    """A feed event without the fields its kind has (``ledger.events.Event``)."""


def _need_int(d: Mapping[str, Any], name: str) -> int:
    value = d.get(name)
    if type(value) is not int:
        raise MalformedEvent(f"event field {name} must be an integer, got {value!r:.60}")
    return value


def _need_str(d: Mapping[str, Any], name: str) -> str:
    value = d.get(name, "")
    if type(value) is not str:
        raise MalformedEvent(f"event field {name} must be a string, got {value!r:.60}")
    return value


def _data(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    data = raw.get("data")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MalformedEvent("event field data must be an object or null")
    return data


def _list(raw: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = raw.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MalformedEvent(f"event field {name} must be a list of objects")
    return value


def _project_order_placed(changes: Changes, raw: Mapping[str, Any], index: int, at: int) -> None:
    d = _data(raw)
    order_id = _need_str(raw, "order_id")
    order = OrderView(
        order_id=order_id,
        cart_id=_need_str(raw, "cart_id"),
        user_id=_need_str(raw, "user_id"),
        lines=tuple(
            OrderLine(
                product_id=_need_str(line, "product_id"),
                quantity=_need_int(line, "quantity"),
                unit_price_minor=_need_int(line, "unit_price_minor"),
                hold_id=_need_str(line, "hold_id"),
            )
            for line in _list(d, "lines")
        ),
        amount_minor=_need_int(d, "amount_minor"),
        currency=_need_str(d, "currency"),
        status=OrderStatus.PENDING,
        payment_status=PaymentStatus.PENDING,
        created_at_ms=at,
        pay_by_ms=_need_int(d, "pay_by_ms"),
        payment_method=_need_str(d, "payment_method"),
        sealed_details=_need_str(d, "sealed_details"),
        provider="",
        transaction_id="",
        payment_attempts=0,
        failure="",
    )
    _put_order(changes, order, index, at, at)
    for line in order.lines:
        changes.patch(
            "cart",
            (line.hold_id,),
            {"status": "ordered", "order_id": order_id, "updated_at_ms": at, "ledger_index": index},
        )


# Kinds that change no row and move no stock: only their index counts.
_NO_ROWS = frozenset({EventKind.RESERVE_REFUSED.value, EventKind.SETTINGS_CHANGED.value})
_KINDS = frozenset(k.value for k in EventKind)


def project_event(changes: Changes, raw: Mapping[str, Any]) -> None:
    """Fold one feed event (its wire dict, ``ledger.codec.encode_event``) into ``changes``.

    The dict is read directly rather than decoded into an ``Event``: a sale produces
    far more events than the writer could afford to decode strictly, most of them
    refusals that write nothing. Every field used is type-checked (``MalformedEvent``).
    """
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise MalformedEvent(f"unknown event kind {kind!r:.60}")
    if kind in _NO_ROWS:
        return
    index, at = _need_int(raw, "index"), _need_int(raw, "at_ms")
    if kind == "product_created" or kind == "product_updated":
        changes.put("inventory", inventory_row(decode_view(ProductView, raw.get("data")), index))
    elif kind == "hold_placed":
        d = _data(raw)
        changes.put(
            "cart",
            {
                "hold_id": _need_str(raw, "hold_id"),
                "cart_id": _need_str(raw, "cart_id"),
                "user_id": _need_str(raw, "user_id"),
                "product_id": _need_str(raw, "product_id"),
                "quantity": _need_int(d, "quantity"),
                "cart_expiry_ms": _need_int(d, "expires_at_ms"),
                "status": "active",
                "order_id": None,
                "created_at_ms": at,
                "updated_at_ms": at,
                "ledger_index": index,
            },
        )
    elif kind in _HOLD_ENDS:
        changes.patch(
            "cart",
            (_need_str(raw, "hold_id"),),
            {"status": _HOLD_ENDS[kind], "updated_at_ms": at, "ledger_index": index},
        )
    elif kind == "order_placed":
        _project_order_placed(changes, raw, index, at)
    elif kind in _ORDER_ENDS:
        d = _data(raw)
        order_id = _need_str(raw, "order_id")
        order_status, payment_status, paid = _ORDER_ENDS[kind]
        failure = _need_str(d, "failure")
        changes.patch(
            "orders",
            (order_id,),
            {
                "order_status": order_status,
                "payment_status": payment_status,
                "failure": failure,
                "updated_at_ms": at,
                "ledger_index": index,
            },
        )
        changes.patch(
            "payment",
            (payment_id_of(order_id),),
            {
                "payment_status": paid,
                "provider": _need_str(d, "provider"),
                "transaction_id": _need_str(d, "transaction_id"),
                "failure": failure,
                "updated_at_ms": at,
                "ledger_index": index,
            },
        )
    elif kind == "payment_declined":
        d = _data(raw)
        changes.patch(
            "payment",
            (payment_id_of(_need_str(raw, "order_id")),),
            {
                "declined_attempts": _need_int(d, "attempts"),
                "provider": _need_str(d, "provider"),
                "transaction_id": _need_str(d, "transaction_id"),
                "updated_at_ms": at,
                "ledger_index": index,
            },
        )
    for level in _list(raw, "stock"):
        changes.patch(
            "inventory",
            (_need_str(level, "product_id"),),
            {
                "available_quantity": _need_int(level, "available"),
                "reserved_quantity": _need_int(level, "reserved"),
                "sold_quantity": _need_int(level, "sold"),
                "total_stock": _need_int(level, "total_stock"),
                "last_updated_ms": at,
                "ledger_index": index,
            },
        )
    moves = _list(raw, "moves")
    if moves:
        seq = _need_int(raw, "seq")
        hold_id, order_id = _need_str(raw, "hold_id"), _need_str(raw, "order_id")
        for move_no, move in enumerate(moves):
            changes.moves.append(
                {
                    "ledger_index": index,
                    "seq": seq,
                    "move_no": move_no,
                    "at_ms": at,
                    "kind": kind,
                    "product_id": _need_str(move, "product_id"),
                    "from_bucket": _bucket(move, "from_bucket"),
                    "to_bucket": _bucket(move, "to_bucket"),
                    "quantity": _need_int(move, "quantity"),
                    "hold_id": hold_id,
                    "order_id": order_id,
                }
            )


_BUCKETS = frozenset(b.value for b in Bucket)


def _bucket(move: Mapping[str, Any], name: str) -> str:
    value = move.get(name)
    if value not in _BUCKETS:
        raise MalformedEvent(f"move field {name} must be a bucket, got {value!r:.60}")
    return str(value)


def project_events(events: Iterable[Mapping[str, Any]], after_index: int) -> Changes:
    """Fold the feed's event dicts with an index above ``after_index`` (the ones already
    applied are skipped: that is what makes a replayed page harmless)."""
    changes = Changes()
    for raw in events:
        index = _need_int(raw, "index")
        if index <= after_index:
            continue
        if index < changes.last_index:
            raise MalformedEvent(f"events out of order: {index} after {changes.last_index}")
        project_event(changes, raw)
        changes.events += 1
        changes.last_index = index
        changes.last_at_ms = _need_int(raw, "at_ms")
    return changes


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """A decoded ledger snapshot: what a rebuild writes."""

    index: int
    at_ms: int
    products: tuple[ProductView, ...]
    holds: tuple[HoldView, ...]  # the active ones
    orders: tuple[OrderView, ...]  # those the ledger has not pruned yet


def decode_snapshot(raw: Mapping[str, Any]) -> SnapshotState:
    """The snapshot of a feed page (``ValueError`` when it is not one)."""
    index, at_ms = raw.get("index"), raw.get("at_ms")
    if type(index) is not int or type(at_ms) is not int:
        raise ValueError("a snapshot needs integer index and at_ms")

    def items(name: str) -> list[Any]:
        value = raw.get(name, [])
        if not isinstance(value, list):
            raise ValueError(f"snapshot.{name} must be a list")
        return value

    return SnapshotState(
        index=index,
        at_ms=at_ms,
        products=tuple(decode_view(ProductView, p) for p in items("products")),
        holds=tuple(decode_view(HoldView, h) for h in items("holds")),
        orders=tuple(decode_view(OrderView, o) for o in items("orders")),
    )


def project_snapshot(s: SnapshotState) -> Changes:
    """Whole rows for everything the snapshot holds (the store upserts them)."""
    changes = Changes()
    for p in s.products:
        changes.put("inventory", inventory_row(p, s.index))
    for h in s.holds:
        changes.put("cart", _cart_row(h, s.index, s.at_ms, None))
    for o in s.orders:
        _put_order(changes, o, s.index, s.at_ms, s.at_ms)
        for line in o.lines:
            changes.patch(
                "cart",
                (line.hold_id,),
                {"status": "ordered", "order_id": o.order_id, "ledger_index": s.index},
            )
    changes.last_index = s.index
    changes.last_at_ms = s.at_ms
    return changes
