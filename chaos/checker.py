"""The chaos checker: a pure verdict over a run's history and the cluster's final state.

Theory of operation: there is no linearizability checker for Python, and none is needed:
the ledger is one totally ordered log, and every node serves that log as its feed of
committed events. The checker replays the feed (every event from index 0, in ``(index,
seq)`` order) into a tiny model of the sale (per product the four buckets, per hold and
order its life, per shopper and product the units counted against the limit) and checks
each invariant of the design at every event:

- ``oversell``: no bucket goes negative (available, reserved, sold; reserved + sold never
  exceed the product's total stock);
- ``conservation``: the stock levels each event announces equal the replay of every move
  before it, and the final /v1/products of every node equals the replay;
- ``limit``: a shopper's held, pending and bought units of a product never exceed its
  per-user limit;
- ``expiry``: a hold (an unpaid order) never outlives its deadline in ledger time: no
  event of a command (``key`` not empty) with ``at_ms >= deadline + tolerance`` comes
  while it is still active; none expires before its deadline; with ``expect_drained``,
  nothing is still reserved once every deadline passed;
- ``fcfs``: a reserve refused as sold out had, at its place in the log, fewer units
  available than it asked for (and the refusal reports that number);
- ``duplicate``: one idempotency key places at most one hold and one order, an order is
  paid at most once, and acknowledged retries of one key name the same hold or order.

Then it walks the history (``chaos.history``):

- ``lost-ack``: every acknowledged hold, release, order and payment is in the feed with
  its key (and the hold or order is still known in the final state);
- ``fcfs``: every ``sold-out`` answer has a refusal in the log with its key, or (an edge
  cache's refusal) the log shows nothing available at the index the cache had reached;
- ``contradiction``: an operation answered with a definite refusal did not take effect
  under its key after all (a retry answered "sold out" for a hold the first attempt
  placed, say);
- ``phantom``: a request refused before it could apply (503 no-leader / overloaded on
  every attempt) left no trace in the log;
- ``divergence``: every node answered at the end, with the same ledger index and digest.

And, when the run fed an order-snapshot store (``final["store"]``, the rows read from
it once its applied index reached the final ledger index; ``check_store``):

- ``store``: the store reached the final ledger index; every order and hold of the log
  has its row with the status the log gives it; every product's inventory row equals the
  replayed stock; the ``stock_moves`` journal sums to those balances; no row the log
  does not have;
- ``duplicate``: no order id twice, no two orders for one cart.

It also counts, without failing the run, stale reads: a 404 "unknown hold/cart/order"
answered about something the shopper owns in the log (nothing changed, but the answer
was wrong).

What it cannot see: an ``unknown`` operation may or may not have happened (both are
accepted); if the feed has a gap (a node had to hand out a snapshot), invariants that
need the events inside the gap are checked from the snapshot on and the gap is reported.

The final state (``final``) is a JSON-able dict: ``events`` (the feed, with optional
``{"reset": snapshot}`` entries where the recorder had to take a snapshot), ``nodes``
(per node ``{"ledger_index", "digest", "products"}`` or None), ``holds`` / ``orders``
(final lookups of acknowledged ids, None when unknown), ``feed_last_index`` (the ledger
index the recorded feed reaches; events are not in every entry), ``expect_drained``
(optionally narrowed to the products in ``drain_products``) and optionally ``store``.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OVERSELL = "oversell"
CONSERVATION = "conservation"
LOST_ACK = "lost-ack"
DUPLICATE = "duplicate"
LIMIT = "limit"
EXPIRY = "expiry"
FCFS = "fcfs"
PHANTOM = "phantom"
CONTRADICTION = "contradiction"
DIVERGENCE = "divergence"
FEED = "feed"
STORE = "store"
VIOLATION_KINDS = (
    OVERSELL,
    CONSERVATION,
    LOST_ACK,
    DUPLICATE,
    LIMIT,
    EXPIRY,
    FCFS,
    PHANTOM,
    CONTRADICTION,
    DIVERGENCE,
    FEED,
    STORE,
)
MAX_REPORTED_PER_KIND = 50  # violations kept in the report per kind (all are counted)

_BUCKETS = ("available", "reserved", "sold")
_NOT_APPLIED_SLUGS = {"no-leader", "overloaded"}  # refused before any proposal
# What each operation leaves in the log when it takes effect.
_EFFECTS: dict[str, tuple[str, ...]] = {
    "reserve": ("hold_placed",),
    "checkout": ("order_placed",),
    "release": ("hold_released",),
    "restock": ("restocked",),
    "pay": ("order_completed", "order_failed", "payment_declined"),
}


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str
    refs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "detail": self.detail, **self.refs}


@dataclass(slots=True)
class Verdict:
    counts: dict[str, int]
    violations: list[Violation]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations))

    def to_json(self) -> dict[str, Any]:
        kept: list[dict[str, Any]] = []
        seen: Counter[str] = Counter()
        for v in self.violations:
            seen[v.kind] += 1
            if seen[v.kind] <= MAX_REPORTED_PER_KIND:
                kept.append(v.to_json())
        return {
            "valid": self.ok,
            "counts": dict(self.counts, violations=len(self.violations)),
            "violations_by_kind": self.by_kind(),
            "violations": kept,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        c = self.counts
        head = "PASS" if self.ok else "FAIL"
        lines = [
            f"{head}: {c.get('operations', 0)} operations, {c.get('faults', 0)} faults injected, "
            f"{c.get('acknowledged', 0)} acknowledged, {c.get('failed', 0)} refused, "
            f"{c.get('unknown', 0)} unknown, {len(self.violations)} violations",
            f"  feed: {c.get('events', 0)} events up to index {c.get('last_index', 0)}, "
            f"{c.get('holds_placed', 0)} holds, {c.get('orders_placed', 0)} orders, "
            f"{c.get('units_sold', 0)} units sold, {c.get('sold_out_refusals', 0)} sold-out "
            f"refusals checked, {c.get('feed_gaps', 0)} gaps",
        ]
        for kind, n in sorted(self.by_kind().items()):
            lines.append(f"  {kind}: {n}")
        for v in self.violations[:10]:
            lines.append(f"  - [{v.kind}] {v.detail}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass(slots=True)
class _Hold:
    hold_id: str
    key: str
    user_id: str
    product_id: str
    quantity: int
    cart_id: str
    expires_at_ms: int
    ended: str | None = None  # hold_released | hold_expired | ordered
    ended_at_ms: int | None = None


@dataclass(slots=True)
class _Order:
    order_id: str
    key: str
    user_id: str
    lines: list[tuple[str, int]]  # (product_id, quantity)
    pay_by_ms: int
    ended: str | None = None
    completions: int = 0
    end_keys: list[str] = field(default_factory=list)


class _Replay:
    """The feed replayed into the smallest model that can judge it."""

    def __init__(self, tolerance_ms: int) -> None:
        self.tolerance_ms = tolerance_ms
        self.violations: list[Violation] = []
        self.levels: dict[str, dict[str, int]] = {}
        self.totals: dict[str, int] = {}
        self.limits: dict[str, int | None] = {}
        self.counted: dict[tuple[str, str], int] = defaultdict(int)
        self.holds: dict[str, _Hold] = {}
        self.orders: dict[str, _Order] = {}
        self.holds_by_key: dict[str, list[str]] = defaultdict(list)
        self.orders_by_key: dict[str, list[str]] = defaultdict(list)
        self.refusals_by_key: dict[str, dict[str, Any]] = {}
        self.event_keys: dict[str, list[str]] = defaultdict(list)  # key -> event kinds
        self.deadlines: list[tuple[int, str, str]] = []  # (deadline_ms, "hold"|"order", id)
        # product -> ([index...], [available after that index...]) for index lookups
        self.available_at: dict[str, tuple[list[int], list[int]]] = {}
        self.last_pos = (-1, -1)
        self.last_index = 0
        self.events = 0
        self.gaps = 0
        self.limit_coverage = True
        self.sold_out_checked = 0
        self.max_expiry_lateness_ms = 0
        self.notes: list[str] = []

    def flag(self, kind: str, detail: str, **refs: Any) -> None:
        self.violations.append(Violation(kind, detail, refs))

    # -- feed ---------------------------------------------------------------------------

    def feed(self, entries: Iterable[Mapping[str, Any]]) -> None:
        for entry in entries:
            if "reset" in entry:
                self._reset(entry["reset"])
            else:
                self._event(entry)

    def _reset(self, snap: Mapping[str, Any]) -> None:
        """The recorder had to take a snapshot: start the model again from it."""
        self.gaps += 1
        self.limit_coverage = False  # bought units are not in a snapshot
        index = int(snap.get("index", 0))
        self.last_pos = (index, 1 << 30)
        self.last_index = index
        for p in snap.get("products", []):
            pid = p["product_id"]
            self.levels[pid] = {b: int(p[b]) for b in _BUCKETS}
            self.totals[pid] = int(p["total_stock"])
            self.limits[pid] = p.get("per_user_limit")
            self._note_available(pid, index)
        active = {h["hold_id"] for h in snap.get("holds", [])}
        for h in self.holds.values():
            if h.ended is None and h.hold_id not in active:
                h.ended = "unknown (feed gap)"
        for h in snap.get("holds", []):
            if h["hold_id"] not in self.holds:
                self._add_hold(
                    h["hold_id"], "", h["user_id"], h["product_id"], int(h["quantity"]),
                    h["cart_id"], int(h["expires_at_ms"]),
                )

    def _event(self, ev: Mapping[str, Any]) -> None:
        index, seq = int(ev["index"]), int(ev["seq"])
        pos = (index, seq)
        if pos <= self.last_pos:
            self.flag(FEED, f"event {pos} comes after {self.last_pos}", index=index, seq=seq)
            return
        self.last_pos = pos
        self.last_index = index
        self.events += 1
        kind = str(ev["kind"])
        key = str(ev.get("key", ""))
        at_ms = int(ev["at_ms"])
        if key:
            self.event_keys[key].append(kind)
            self._check_deadlines(at_ms, pos, kind)
        self._moves(ev, pos)
        handler = getattr(self, "_on_" + kind, None)
        if handler is not None:
            handler(ev, key, at_ms, pos)

    def _moves(self, ev: Mapping[str, Any], pos: tuple[int, int]) -> None:
        touched: set[str] = set()
        for m in ev.get("moves") or ():
            pid, q = m["product_id"], int(m["quantity"])
            lv = self.levels.setdefault(pid, {b: 0 for b in _BUCKETS})
            self.totals.setdefault(pid, 0)
            src, dst = m["from_bucket"], m["to_bucket"]
            if src == "outside":
                self.totals[pid] += q
            else:
                lv[src] -= q
            if dst == "outside":
                self.totals[pid] -= q
            else:
                lv[dst] += q
            touched.add(pid)
        for pid in sorted(touched):
            lv, total = self.levels[pid], self.totals[pid]
            if min(lv.values()) < 0 or lv["reserved"] + lv["sold"] > total:
                self.flag(
                    OVERSELL,
                    f"{pid} at {pos}: available={lv['available']} reserved={lv['reserved']} "
                    f"sold={lv['sold']} of total {total}",
                    index=pos[0], seq=pos[1], product_id=pid,
                )
            self._note_available(pid, pos[0])
        for st in ev.get("stock") or ():
            pid = st["product_id"]
            known = self.levels.get(pid)
            said = {b: int(st[b]) for b in _BUCKETS}
            if known is None or said != known or int(st["total_stock"]) != self.totals.get(pid):
                self.flag(
                    CONSERVATION,
                    f"{pid} at {pos}: the event says {said} of {st['total_stock']}, the moves "
                    f"before it add up to {known} of {self.totals.get(pid)}",
                    index=pos[0], seq=pos[1], product_id=pid,
                )
                # Follow the ledger from here so one error is reported once.
                self.levels[pid] = said
                self.totals[pid] = int(st["total_stock"])

    def _note_available(self, pid: str, index: int) -> None:
        indexes, values = self.available_at.setdefault(pid, ([], []))
        available = self.levels[pid]["available"]
        if indexes and indexes[-1] == index:
            values[-1] = available
        else:
            indexes.append(index)
            values.append(available)

    def available_after(self, pid: str, index: int) -> int | None:
        """Units of ``pid`` available once entry ``index`` was applied (None: unknown)."""
        found = self.available_at.get(pid)
        if found is None:
            return None
        indexes, values = found
        i = bisect.bisect_right(indexes, index) - 1
        return values[i] if i >= 0 else None

    def _check_deadlines(self, at_ms: int, pos: tuple[int, int], kind: str) -> None:
        while self.deadlines and self.deadlines[0][0] + self.tolerance_ms <= at_ms:
            deadline, what, ident = heapq.heappop(self.deadlines)
            thing: _Hold | _Order | None = (
                self.holds.get(ident) if what == "hold" else self.orders.get(ident)
            )
            if thing is not None and thing.ended is None:
                self.flag(
                    EXPIRY,
                    f"{what} {ident} was still active at {pos} ({kind} at {at_ms} ms), "
                    f"{at_ms - deadline} ms after its deadline {deadline}",
                    index=pos[0], seq=pos[1], **{f"{what}_id": ident},
                )

    def _add_hold(
        self, hid: str, key: str, user: str, pid: str, q: int, cart: str, expires: int
    ) -> _Hold:
        h = _Hold(hid, key, user, pid, q, cart, expires)
        self.holds[hid] = h
        heapq.heappush(self.deadlines, (expires, "hold", hid))
        return h

    def _count(self, user: str, pid: str, q: int, pos: tuple[int, int]) -> None:
        pair = (user, pid)
        self.counted[pair] += q
        limit = self.limits.get(pid)
        if self.limit_coverage and limit is not None and self.counted[pair] > limit:
            self.flag(
                LIMIT,
                f"{user} holds or bought {self.counted[pair]} units of {pid} at {pos}, "
                f"limit {limit}",
                index=pos[0], seq=pos[1], user_id=user, product_id=pid,
            )

    # -- event kinds ------------------------------------------------------------------

    def _on_product_created(self, ev: Mapping[str, Any], *_: Any) -> None:
        data = ev.get("data") or {}
        self.limits[str(ev["product_id"])] = data.get("per_user_limit")

    _on_product_updated = _on_product_created

    def _on_hold_placed(self, ev: Mapping[str, Any], key: str, at_ms: int, pos: Any) -> None:
        data = ev.get("data") or {}
        hid, q = str(ev["hold_id"]), int(data["quantity"])
        if hid in self.holds:
            self.flag(DUPLICATE, f"hold id {hid} placed twice (again at {pos})", hold_id=hid)
        self._add_hold(
            hid, key, str(ev["user_id"]), str(ev["product_id"]), q, str(ev["cart_id"]),
            int(data["expires_at_ms"]),
        )
        self.holds_by_key[key].append(hid)
        self._count(str(ev["user_id"]), str(ev["product_id"]), q, pos)

    def _end_hold(self, ev: Mapping[str, Any], at_ms: int, how: str) -> _Hold | None:
        h = self.holds.get(str(ev["hold_id"]))
        if h is None:
            if not self.gaps:
                self.flag(FEED, f"{how} of unknown hold {ev['hold_id']}", hold_id=ev["hold_id"])
            return None
        if h.ended is not None and not h.ended.startswith("unknown"):
            self.flag(FEED, f"hold {h.hold_id} ended twice ({h.ended}, then {how})",
                      hold_id=h.hold_id)
            return None
        h.ended, h.ended_at_ms = how, at_ms
        self.counted[(h.user_id, h.product_id)] -= h.quantity
        return h

    def _on_hold_released(self, ev: Mapping[str, Any], key: str, at_ms: int, pos: Any) -> None:
        h = self._end_hold(ev, at_ms, "hold_released")
        if h is not None and at_ms >= h.expires_at_ms + self.tolerance_ms:
            self.flag(EXPIRY, f"hold {h.hold_id} released at {at_ms}, after its expiry "
                      f"{h.expires_at_ms}", hold_id=h.hold_id)

    def _on_hold_expired(self, ev: Mapping[str, Any], key: str, at_ms: int, pos: Any) -> None:
        h = self._end_hold(ev, at_ms, "hold_expired")
        if h is None:
            return
        if at_ms < h.expires_at_ms:
            self.flag(EXPIRY, f"hold {h.hold_id} expired at {at_ms}, before its deadline "
                      f"{h.expires_at_ms}", hold_id=h.hold_id)
        self.max_expiry_lateness_ms = max(self.max_expiry_lateness_ms, at_ms - h.expires_at_ms)

    def _on_order_placed(self, ev: Mapping[str, Any], key: str, at_ms: int, pos: Any) -> None:
        data = ev.get("data") or {}
        oid = str(ev["order_id"])
        lines: list[tuple[str, int]] = []
        for line in data.get("lines") or ():
            hid = str(line["hold_id"])
            h = self.holds.get(hid)
            if h is not None:
                if h.ended is not None and not h.ended.startswith("unknown"):
                    self.flag(FEED, f"order {oid} takes hold {hid}, which ended ({h.ended})",
                              order_id=oid, hold_id=hid)
                h.ended, h.ended_at_ms = "ordered", at_ms
            lines.append((str(line["product_id"]), int(line["quantity"])))
        if oid in self.orders:
            self.flag(DUPLICATE, f"order id {oid} placed twice (again at {pos})", order_id=oid)
        self.orders[oid] = _Order(oid, key, str(ev["user_id"]), lines, int(data["pay_by_ms"]))
        self.orders_by_key[key].append(oid)
        heapq.heappush(self.deadlines, (int(data["pay_by_ms"]), "order", oid))

    def _close_order(self, ev: Mapping[str, Any], key: str, at_ms: int, how: str) -> None:
        o = self.orders.get(str(ev["order_id"]))
        if o is None:
            if not self.gaps:
                self.flag(FEED, f"{how} of unknown order {ev['order_id']}",
                          order_id=ev["order_id"])
            return
        if how == "order_completed":
            o.completions += 1
            if o.completions > 1:
                self.flag(DUPLICATE, f"order {o.order_id} paid {o.completions} times",
                          order_id=o.order_id)
        if o.ended is not None:
            self.flag(FEED, f"order {o.order_id} ended twice ({o.ended}, then {how})",
                      order_id=o.order_id)
            return
        o.ended = how
        o.end_keys.append(key)
        if how != "order_completed":
            for pid, q in o.lines:
                self.counted[(o.user_id, pid)] -= q
        if how == "order_expired" and at_ms < o.pay_by_ms:
            self.flag(EXPIRY, f"order {o.order_id} expired at {at_ms}, before its deadline "
                      f"{o.pay_by_ms}", order_id=o.order_id)
        if how == "order_completed" and at_ms >= o.pay_by_ms + self.tolerance_ms:
            self.flag(EXPIRY, f"order {o.order_id} paid at {at_ms}, after its deadline "
                      f"{o.pay_by_ms}", order_id=o.order_id)

    def _on_order_completed(self, ev: Mapping[str, Any], key: str, at_ms: int, _: Any) -> None:
        self._close_order(ev, key, at_ms, "order_completed")

    def _on_order_failed(self, ev: Mapping[str, Any], key: str, at_ms: int, _: Any) -> None:
        self._close_order(ev, key, at_ms, "order_failed")

    def _on_order_expired(self, ev: Mapping[str, Any], key: str, at_ms: int, _: Any) -> None:
        self._close_order(ev, key, at_ms, "order_expired")

    def _on_reserve_refused(self, ev: Mapping[str, Any], key: str, at_ms: int, pos: Any) -> None:
        data = ev.get("data") or {}
        self.refusals_by_key[key] = dict(ev)
        if data.get("reason") != "sold_out":
            return
        pid = str(ev["product_id"])
        lv = self.levels.get(pid)
        if lv is None:
            return
        self.sold_out_checked += 1
        asked = data.get("quantity")
        if isinstance(asked, int) and lv["available"] >= asked:
            self.flag(
                FCFS,
                f"reserve {key} of {asked} x {pid} refused as sold out at {pos} while "
                f"{lv['available']} were available",
                index=pos[0], seq=pos[1], key=key, product_id=pid,
            )
        said = data.get("available")
        if isinstance(said, int) and said != lv["available"]:
            self.flag(
                FCFS,
                f"refusal {key} at {pos} says {said} available, the log has {lv['available']}",
                index=pos[0], seq=pos[1], key=key, product_id=pid,
            )


def _pair_operations(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Completed operations: each completion merged with its invocation."""
    invokes: dict[int, Mapping[str, Any]] = {}
    ops: list[dict[str, Any]] = []
    for rec in history:
        t = rec.get("type")
        if t == "invoke":
            invokes[int(rec["id"])] = rec
        elif t in ("ok", "fail", "unknown"):
            inv = invokes.pop(int(rec["id"]), {})
            ops.append({**inv, **rec, "request": rec.get("request", inv.get("request", {}))})
    for inv in invokes.values():  # invoked, never completed (the run died): unknown
        ops.append({**inv, "type": "unknown", "error": "never completed"})
    return ops


def _slug(result: Mapping[str, Any] | None) -> str:
    if not result:
        return ""
    t = str(result.get("type", ""))
    return t.rsplit("/", 1)[-1] if t.startswith("http") else t


class _HistoryCheck:
    def __init__(self, replay: _Replay, final: Mapping[str, Any]) -> None:
        self.r = replay
        self.final_holds: Mapping[str, Any] = final.get("holds") or {}
        self.final_orders: Mapping[str, Any] = final.get("orders") or {}
        self.acked_ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.stale_reads: list[str] = []  # "unknown" answers about things the log has

    def check(self, op: Mapping[str, Any]) -> None:
        lk = str(op.get("ledger_key") or "")
        kind, outcome = str(op.get("op")), op.get("type")
        result = op.get("result") or {}
        if outcome == "ok":
            method = getattr(self, f"_ok_{kind}", None)
            if method is not None:
                method(op, lk, result)
        elif outcome == "fail":
            slug = _slug(result)
            if kind == "reserve" and slug == "sold-out":
                self._sold_out_answer(op, lk, result)
            if slug in ("unknown-hold", "unknown-cart", "unknown-order"):
                self._unknown_answer(op, slug)
            status = op.get("status")
            definite = isinstance(status, int) and status < 500  # the ledger's own refusal
            effects = [k for k in self.r.event_keys.get(lk, ()) if k in _EFFECTS.get(kind, ())]
            if lk and definite and effects:
                self.r.flag(CONTRADICTION, f"{kind} {lk} was answered {op.get('status')} "
                            f"{slug or 'failure'}, but the log shows it took effect ({effects})",
                            key=lk, op_id=op.get("id"))
            if (
                isinstance(status, int) and status >= 500 and slug in _NOT_APPLIED_SLUGS
                and not op.get("ambiguous") and lk in self.r.event_keys
            ):
                self.r.flag(PHANTOM, f"{kind} {lk} was answered {status} {slug} (never "
                            f"applied) but the log has {self.r.event_keys[lk]}", key=lk)

    def _lost(self, op: Mapping[str, Any], lk: str, what: str, **refs: Any) -> None:
        self.r.flag(LOST_ACK, f"acknowledged {op.get('op')} {lk} ({op.get('process')}, op "
                    f"{op.get('id')}): {what}", key=lk, op_id=op.get("id"), **refs)

    def _same_id(self, op: Mapping[str, Any], lk: str, ident: str) -> None:
        ids = self.acked_ids[(str(op.get("op")), lk)]
        ids.add(ident)
        if len(ids) > 1:
            self.r.flag(DUPLICATE, f"key {lk} acknowledged with different ids {sorted(ids)}",
                        key=lk)

    def _ok_reserve(self, op: Mapping[str, Any], lk: str, result: Mapping[str, Any]) -> None:
        hid = str(result.get("hold_id", ""))
        self._same_id(op, lk, hid)
        h = self.r.holds.get(hid)
        if h is None:
            if not self.r.gaps or self.final_holds.get(hid) is None:
                self._lost(op, lk, f"hold {hid} is not in the log", hold_id=hid)
            return
        req = op.get("request") or {}
        expected = (lk, req.get("product_id"), req.get("quantity"), result.get("cart_id"))
        found = (h.key, h.product_id, h.quantity, h.cart_id)
        if expected != found:
            self._lost(op, lk, f"hold {hid} in the log is {found}, acknowledged as {expected}",
                       hold_id=hid)
        if hid in self.final_holds and self.final_holds[hid] is None:
            self._lost(op, lk, f"hold {hid} is unknown to the final state", hold_id=hid)

    def _ok_release(self, op: Mapping[str, Any], lk: str, result: Mapping[str, Any]) -> None:
        hid = str(result.get("hold_id", ""))
        if "hold_released" not in self.r.event_keys.get(lk, ()):
            self._lost(op, lk, f"no release of {hid} with this key in the log", hold_id=hid)

    def _ok_checkout(self, op: Mapping[str, Any], lk: str, result: Mapping[str, Any]) -> None:
        oid = str(result.get("order_id", ""))
        self._same_id(op, lk, oid)
        o = self.r.orders.get(oid)
        if o is None or o.key != lk:
            if o is not None or not self.r.gaps or self.final_orders.get(oid) is None:
                self._lost(op, lk, f"order {oid} is not in the log with this key", order_id=oid)
            return
        if oid in self.final_orders and self.final_orders[oid] is None:
            self._lost(op, lk, f"order {oid} is unknown to the final state", order_id=oid)

    def _ok_pay(self, op: Mapping[str, Any], lk: str, result: Mapping[str, Any]) -> None:
        kinds = self.r.event_keys.get(lk, [])
        outcome = str((op.get("request") or {}).get("outcome", ""))
        expected = {
            "paid": "order_completed",
            "failed": "order_failed",
            "declined": "payment_declined",
        }.get(outcome)
        if expected is not None and expected not in kinds:
            self._lost(op, lk, f"no {expected} with this key in the log",
                       order_id=result.get("order_id"))

    def _ok_restock(self, op: Mapping[str, Any], lk: str, result: Mapping[str, Any]) -> None:
        if "restocked" not in self.r.event_keys.get(lk, []):
            self._lost(op, lk, "no restock with this key in the log")

    def _unknown_answer(self, op: Mapping[str, Any], slug: str) -> None:
        """A 404 about a hold, cart or order the shopper owns in the log: not a broken
        promise of the ledger (nothing changed), but a stale read worth reporting."""
        req = op.get("request") or {}
        thing = slug.removeprefix("unknown-")
        ident = str(req.get(f"{thing}_id", ""))
        user = req.get("user_id")
        owners = {
            "hold": {h.user_id for h in (self.r.holds.get(ident),) if h is not None},
            "cart": {h.user_id for h in self.r.holds.values() if h.cart_id == ident},
            "order": {o.user_id for o in (self.r.orders.get(ident),) if o is not None},
        }[thing]
        if user in owners:
            self.stale_reads.append(f"{op.get('op')} op {op.get('id')}: 404 for {thing} "
                                    f"{ident} of {user}, which the log has")

    def _sold_out_answer(self, op: Mapping[str, Any], lk: str, result: Mapping[str, Any]) -> None:
        pid = str((op.get("request") or {}).get("product_id", ""))
        if result.get("source") == "edge-cache":
            index = result.get("ledger_index")
            if not isinstance(index, int):
                return
            available = self.r.available_after(pid, index)
            if available is not None and available > 0:
                self.r.flag(FCFS, f"{lk}: a gateway's cache refused {pid} as sold out at "
                            f"index {index}, when the log had {available} available",
                            key=lk, index=index, product_id=pid)
            return
        refusal = self.r.refusals_by_key.get(lk)
        logged = refusal is not None and (refusal.get("data") or {}).get("reason") == "sold_out"
        if not logged and not self.r.gaps:
            self.r.flag(FCFS, f"{lk}: refused as sold out, but the log has no sold-out "
                            f"refusal with this key", key=lk, product_id=pid)


def _final_checks(r: _Replay, final: Mapping[str, Any]) -> None:
    nodes: Mapping[str, Any] = final.get("nodes") or {}
    answered = {n: s for n, s in nodes.items() if s is not None}
    for n in sorted(set(nodes) - set(answered)):
        r.flag(DIVERGENCE, f"node {n} did not answer at the end", node=n)
    states = {(s.get("ledger_index"), s.get("digest")) for s in answered.values()}
    if len(states) > 1:
        r.flag(DIVERGENCE, f"nodes disagree at the end: "
               f"{ {n: (s.get('ledger_index'), s.get('digest')) for n, s in answered.items()} }")
    feed_index = final.get("feed_last_index", r.last_index)
    behind = sorted(n for n, s in answered.items() if s.get("ledger_index") != feed_index)
    if behind:
        r.notes.append(f"final products of {behind} not compared with the feed: their index "
                       f"differs from the feed's {feed_index}")
    for node_id, s in sorted(answered.items()):
        caught_up = s.get("ledger_index") == feed_index
        for p in s.get("products") or ():
            pid = p["product_id"]
            levels = {b: int(p[b]) for b in _BUCKETS}
            total = int(p["total_stock"])
            if min(levels.values()) < 0 or sum(levels.values()) != total:
                r.flag(OVERSELL, f"{node_id} ends with {pid} at {levels} of total {total}",
                       node=node_id, product_id=pid)
            if caught_up and (levels != r.levels.get(pid) or total != r.totals.get(pid)):
                r.flag(CONSERVATION, f"{node_id} ends with {pid} at {levels} of {total}, the "
                       f"feed adds up to {r.levels.get(pid)} of {r.totals.get(pid)}",
                       node=node_id, product_id=pid)
            drain = final.get("drain_products")
            if (
                final.get("expect_drained")
                and levels["reserved"] != 0
                and (drain is None or pid in drain)
            ):
                r.flag(EXPIRY, f"{node_id}: {levels['reserved']} units of {pid} still reserved "
                       "after every hold and payment deadline passed", node=node_id,
                       product_id=pid)
    for key, hids in r.holds_by_key.items():
        if key and len(hids) > 1:
            r.flag(DUPLICATE, f"key {key} placed {len(hids)} holds {hids}", key=key)
    for key, oids in r.orders_by_key.items():
        if key and len(oids) > 1:
            r.flag(DUPLICATE, f"key {key} placed {len(oids)} orders {oids}", key=key)


# The row status of an order and of a hold once the log ended it (None: still open).
_ORDER_ROW_STATUS = {
    None: ("pending", "pending"),
    "order_completed": ("completed", "paid"),
    "order_failed": ("failed", "failed"),
    "order_expired": ("failed", "failed"),
}
_HOLD_ROW_STATUS = {
    None: "active",
    "hold_released": "released",
    "hold_expired": "expired",
    "ordered": "ordered",
}
# After a rebuild from a ledger snapshot the store cannot tell released from expired.
_HOLD_REBUILT_ENDS = {"released", "expired"}


@dataclass(frozen=True, slots=True)
class StoreExpectation:
    """What the store must hold once it reached ``index``: from the replayed log."""

    index: int
    levels: Mapping[str, Mapping[str, int]]  # product -> {available, reserved, sold}
    totals: Mapping[str, int]  # product -> total stock
    orders: Mapping[str, tuple[str, str]]  # order -> (order_status, payment_status)
    holds: Mapping[str, str | None]  # hold -> cart row status (None: unknown, feed gap)
    acknowledged: frozenset[str] = frozenset()  # ids a shopper was told about


def check_store(store: Mapping[str, Any], expect: StoreExpectation) -> list[Violation]:
    """Judge the rows of an order-snapshot store against the log it follows.

    ``store``: ``applied_index``, ``rebuilt_from_index`` and, per table (``orders``,
    ``cart``, ``inventory``, ``stock_moves``), its rows as dicts of column -> value.
    """
    out: list[Violation] = []

    def flag(kind: str, detail: str, **refs: Any) -> None:
        out.append(Violation(kind, detail, refs))

    applied = int(store.get("applied_index", -1))
    if applied != expect.index:
        # Rows of another index cannot be compared with the final state: say only this.
        flag(STORE, f"the snapshot store stopped at ledger index {applied}, the ledger is "
             f"at {expect.index}", applied_index=applied)
        return out
    rebuilt = int(store.get("rebuilt_from_index", 0)) > 0

    order_rows: dict[str, Mapping[str, Any]] = {}
    by_cart: dict[str, list[str]] = defaultdict(list)
    for row in store.get("orders") or ():
        oid = str(row["order_id"])
        if oid in order_rows:
            flag(DUPLICATE, f"the store has order {oid} twice", order_id=oid)
        order_rows[oid] = row
        by_cart[str(row["cart_id"])].append(oid)
    for cart, oids in sorted(by_cart.items()):
        if len(set(oids)) > 1:
            flag(DUPLICATE, f"the store has {len(set(oids))} orders for cart {cart}: "
                 f"{sorted(set(oids))}", cart_id=cart)
    for oid, (status, payment) in sorted(expect.orders.items()):
        row = order_rows.get(oid)
        acked = " (acknowledged)" if oid in expect.acknowledged else ""
        if row is None:
            flag(STORE, f"order {oid}{acked} is not in the snapshot store", order_id=oid)
            continue
        found = (str(row["order_status"]), str(row["payment_status"]))
        if found != (status, payment):
            flag(STORE, f"order {oid}{acked} is {found} in the store, {(status, payment)} in "
                 "the log", order_id=oid)
    for oid in sorted(set(order_rows) - set(expect.orders)):
        flag(STORE, f"the store has order {oid}, which the log never placed", order_id=oid)

    hold_rows = {str(r["hold_id"]): r for r in store.get("cart") or ()}
    for hid, wanted in sorted(expect.holds.items()):
        row = hold_rows.get(hid)
        if row is None:
            # A rebuild from a snapshot never sees holds that ended inside the gap.
            if not (rebuilt and wanted != "active"):
                flag(STORE, f"hold {hid} is not in the snapshot store", hold_id=hid)
            continue
        got = str(row["status"])
        ok = wanted is None or got == wanted or (
            rebuilt and wanted in _HOLD_REBUILT_ENDS and got in (*_HOLD_REBUILT_ENDS, "ended")
        )
        if not ok:
            flag(STORE, f"hold {hid} is {got!r} in the store, {wanted!r} in the log",
                 hold_id=hid)
    for hid in sorted(set(hold_rows) - set(expect.holds)):
        flag(STORE, f"the store has hold {hid}, which the log never placed", hold_id=hid)

    inventory = {str(r["product_id"]): r for r in store.get("inventory") or ()}
    journal: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_BUCKETS, 0))
    outside: dict[str, int] = defaultdict(int)
    for m in store.get("stock_moves") or ():
        pid, q = str(m["product_id"]), int(m["quantity"])
        for bucket, sign in ((str(m["from_bucket"]), -1), (str(m["to_bucket"]), 1)):
            if bucket == "outside":
                outside[pid] += sign * q
            else:
                journal[pid][bucket] = journal[pid].get(bucket, 0) + sign * q
    for pid in sorted(set(expect.levels) | set(inventory) | set(journal)):
        levels = dict(expect.levels.get(pid) or {})
        total = expect.totals.get(pid)
        if not levels:
            flag(STORE, f"the store has product {pid}, which the log never created",
                 product_id=pid)
            continue
        row = inventory.get(pid)
        if row is None:
            flag(STORE, f"product {pid} has no inventory row", product_id=pid)
        else:
            stock = {
                "available": int(row["available_quantity"]),
                "reserved": int(row["reserved_quantity"]),
                "sold": int(row["sold_quantity"]),
            }
            if stock != levels or int(row["total_stock"]) != total:
                flag(STORE, f"inventory row of {pid} is {stock} of {row['total_stock']}, the "
                     f"ledger ends with {levels} of {total}", product_id=pid)
        sums = {b: journal[pid].get(b, 0) for b in _BUCKETS}
        if sums != levels or -outside[pid] != total:
            flag(STORE, f"the stock_moves journal of {pid} sums to {sums} of {-outside[pid]}, "
                 f"the ledger ends with {levels} of {total}", product_id=pid)
    return out


def store_expectation(r: _Replay, final: Mapping[str, Any], acknowledged: Iterable[str]
                      ) -> StoreExpectation:
    """What the store should hold, from the replay of the feed."""
    return StoreExpectation(
        index=int(final.get("feed_last_index", r.last_index)),
        levels={p: dict(lv) for p, lv in r.levels.items()},
        totals=dict(r.totals),
        orders={oid: _ORDER_ROW_STATUS.get(o.ended, ("pending", "pending"))
                for oid, o in r.orders.items()},
        holds={hid: None if h.ended is not None and h.ended.startswith("unknown")
               else _HOLD_ROW_STATUS.get(h.ended) for hid, h in r.holds.items()},
        acknowledged=frozenset(acknowledged),
    )


def check(
    history: Sequence[Mapping[str, Any]],
    final: Mapping[str, Any],
    *,
    expiry_tolerance_ms: int = 0,
) -> Verdict:
    """Judge a run: see the module docstring for every rule."""
    r = _Replay(expiry_tolerance_ms)
    r.feed(final.get("events") or ())
    ops = _pair_operations(history)
    hc = _HistoryCheck(r, final)
    for op in ops:
        hc.check(op)
    _final_checks(r, final)
    store = final.get("store")
    if store is not None:
        acked = [str((op.get("result") or {}).get(f)) for op in ops if op.get("type") == "ok"
                 for f in ("order_id", "hold_id") if f in (op.get("result") or {})]
        r.violations.extend(check_store(store, store_expectation(r, final, acked)))
    outcomes = Counter(str(op.get("type")) for op in ops)
    counts = {
        "operations": len(ops),
        "acknowledged": outcomes["ok"],
        "failed": outcomes["fail"],
        "unknown": outcomes["unknown"],
        "faults": sum(1 for rec in history if rec.get("type") == "fault"
                      and rec.get("phase") == "begin"),
        "events": r.events,
        "last_index": int(final.get("feed_last_index", r.last_index)),
        "holds_placed": len(r.holds),
        "orders_placed": len(r.orders),
        "units_sold": sum(lv["sold"] for lv in r.levels.values()),
        "sold_out_refusals": r.sold_out_checked,
        "feed_gaps": r.gaps,
        "max_expiry_lateness_ms": r.max_expiry_lateness_ms,
    }
    for kind, n in sorted(Counter(str(op.get("op")) for op in ops).items()):
        counts[f"op_{kind}"] = n
    counts["stale_reads"] = len(hc.stale_reads)
    if store is not None:
        counts["store_orders"] = len(store.get("orders") or ())
        counts["store_index"] = int(store.get("applied_index", -1))
    notes = list(r.notes)
    if hc.stale_reads:
        notes.append(f"{len(hc.stale_reads)} stale read(s), answered 404 for something the "
                     f"shopper owns (not a violation: nothing changed); first: "
                     f"{hc.stale_reads[0]}")
    if r.gaps:
        notes.append(f"the feed had {r.gaps} gap(s): per-user limits were not checked after "
                     "the first, acknowledgements inside a gap were checked in the final state")
    return Verdict(counts, r.violations, notes)
