"""The stock ledger: the deterministic state machine every node runs.

Theory of operation. The ledger is fed batches of commands, one batch per Raft entry, in
log order, and nothing else: no clock, no randomness, no I/O. Every node applying the
same entries therefore reaches the same state, which ``digest()`` proves.

Time. Each command carries the leader's ``at_ms``; ledger time is the running maximum of
the batch's and the commands' stamps, so it never goes back. Before a command is
applied, every hold and pending order whose deadline is at or before the new time is
expired (a min-heap of deadlines makes that O(log n) per item and O(1) when nothing is
due). Expiry thus happens at an exact place in the log, whichever node leads; ``Expire``
only gives the leader a way to move time forward when no other command arrives.

Stock. Every product's units sit in three buckets, ``available``, ``reserved`` and
``sold``, which always add up to ``total_stock``. A reserve moves units from available
to reserved under a hold; a checkout hands the units of a cart's active holds to one
pending order (they stay reserved); payment moves them to sold, and a release, an expiry,
a failed payment or a missed payment deadline moves them back to available. Each move is
an event carrying the moves and the product's levels after it.

Idempotency. Every command's key is remembered with the command and its result; a retry
gets the stored result and changes nothing (see ``ledger.idempotency``).

Safety. A handler checks everything before it changes anything, so a refusal leaves no
trace but its result (and, for reserves, a ``reserve_refused`` event). ``apply`` never
raises: a bug surfacing as an exception becomes a ``Rejected(INVALID)`` result and a line
in ``violations``; after every batch the cheap invariants of the touched products are
checked the same way. ``check_invariants`` recomputes everything and raises.

Memory. Ended holds, carts and orders are pruned, and idempotency keys forgotten, after
``settings.retention_ms`` of ledger time (oldest first, O(1) each); keys beyond
``settings.max_idempotency_keys`` are forgotten early. Per-user unit counters stay, since
per-user limits need them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ledger.codec import DecodeError, decode_command, encode_command, encode_result, encode_view
from ledger.commands import (
    Checkout,
    Command,
    Configure,
    CreateProduct,
    Expire,
    PaymentOutcome,
    RecordPayment,
    Release,
    Reserve,
    Restock,
    UpdateProduct,
)
from ledger.deadlines import HOLD, ORDER, Deadline, Deadlines
from ledger.digest import digest_of
from ledger.errors import InvariantViolation
from ledger.events import Bucket, Event, EventKind, JSONValue, Move, StockLevel
from ledger.frozen import fast_builder
from ledger.idempotency import IdempotencyMemory, same_command
from ledger.invariants import StateParts, product_problems, state_problems
from ledger.limits import (
    MAX_COMMANDS_PER_ENTRY,
    MAX_HOLDS_PER_CART,
    MAX_ID_LEN,
    MAX_QUANTITY,
    MAX_STOCK,
)
from ledger.reasons import Reason
from ledger.records import CartRecord, HoldRecord, OrderRecord, ProductRecord
from ledger.results import (
    Configured,
    Expired,
    HoldPlaced,
    HoldReleased,
    OrderPlaced,
    PaymentRecorded,
    ProductSaved,
    Rejected,
    Restocked,
    Result,
)
from ledger.settings import Settings, settings_problem
from ledger.validation import (
    MAX_AMOUNT_MINOR,
    currency_problem,
    hold_ttl_problem,
    id_problem,
    int_problem,
    is_id,
    limit_problem,
    name_problem,
    price_problem,
    stock_problem,
    text_problem,
    time_problem,
    window_problem,
)
from ledger.views import (
    CartStatus,
    CartView,
    HoldStatus,
    HoldView,
    OrderLine,
    OrderStatus,
    OrderView,
    PaymentStatus,
    ProductView,
)

MAX_VIOLATIONS = 100  # invariant violations kept for the node to report (newest kept)
MOVE_CACHE_SIZE = 4096  # distinct (product, quantity) reserve moves kept for reuse

_event = fast_builder(Event)
_move = fast_builder(Move)
_hold_placed = fast_builder(HoldPlaced)
_rejected = fast_builder(Rejected)

_AVAILABLE, _RESERVED, _SOLD, _OUTSIDE = (
    Bucket.AVAILABLE,
    Bucket.RESERVED,
    Bucket.SOLD,
    Bucket.OUTSIDE,
)
_HOLD_PLACED = EventKind.HOLD_PLACED
_RESERVE_REFUSED = EventKind.RESERVE_REFUSED
_ACTIVE = HoldStatus.ACTIVE
_PENDING = OrderStatus.PENDING

UserProduct = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one batch (one Raft entry) produced."""

    index: int  # the ledger's entry index after this batch
    results: tuple[Result, ...]  # one per command, in order
    events: tuple[Event, ...]  # in order; every event's index is ``index``


def _invalid(message: str) -> Rejected:
    return _rejected(Reason.INVALID, message, None)


@lru_cache(maxsize=MOVE_CACHE_SIZE)
def _reserve_moves(product_id: str, quantity: int) -> tuple[Move, ...]:
    # Moves are immutable values: a reserve of the same size on the same product can share
    # one, which saves a third of a hold event's cost.
    return (_move(product_id, _AVAILABLE, _RESERVED, quantity),)


def _add(counter: dict[UserProduct, int], pair: UserProduct, units: int) -> None:
    counter[pair] = counter.get(pair, 0) + units


class Ledger:
    """The replicated state of a sale: products, holds, carts, orders, idempotency keys."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings if settings is not None else Settings()
        self._index = 0  # entries (batches) applied
        self._now = 0  # ledger time, ms since the epoch
        self._products: dict[str, ProductRecord] = {}
        self._holds: dict[str, HoldRecord] = {}
        self._carts: dict[str, CartRecord] = {}
        self._orders: dict[str, OrderRecord] = {}
        self._open_carts: dict[str, str] = {}  # user -> their open cart
        # Units each user counts against a product's limit: active holds and pending
        # orders (held), completed orders (bought). Zero entries are dropped.
        self._held: dict[UserProduct, int] = {}
        self._bought: dict[UserProduct, int] = {}
        self._hold_count = 0
        self._cart_count = 0
        self._order_count = 0
        self._deadlines = Deadlines()
        # Ended records waiting to be pruned, oldest first: (ended_at_ms, HOLD|ORDER, id).
        self._ended: deque[tuple[int, int, str]] = deque()
        self._memory = IdempotencyMemory()
        self.violations: list[str] = []  # invariant breaches seen while applying (bounded)
        self._reset_scratch()

    def _reset_scratch(self) -> None:
        # Per-batch working state: never part of the replicated state or of snapshots.
        self._events: list[Event] = []
        self._touched: dict[str, None] = {}  # products the batch changed, in order
        self._expired_holds: list[str] | None = None  # what this command's time step expired
        self._expired_orders: list[str] | None = None
        self._digest_cache: tuple[int, str] | None = None

    # ---- pickling (pysyncobj snapshots) -------------------------------------------

    _SCRATCH = ("_events", "_touched", "_expired_holds", "_expired_orders", "_digest_cache")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._SCRATCH}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_scratch()
        self.check_invariants()

    # ---- reads ----------------------------------------------------------------------

    @property
    def index(self) -> int:
        """Entries (batches) applied so far."""
        return self._index

    @property
    def now_ms(self) -> int:
        """Ledger time: the largest ``at_ms`` applied so far."""
        return self._now

    @property
    def settings(self) -> Settings:
        return self._settings

    def product(self, product_id: str) -> ProductView | None:
        p = self._products.get(product_id)
        return None if p is None else p.view()

    def products(self) -> list[ProductView]:
        """Every product, in the order they were created."""
        return [p.view() for p in self._products.values()]

    def stock_level(self, product_id: str) -> StockLevel | None:
        p = self._products.get(product_id)
        return None if p is None else p.level()

    def hold(self, hold_id: str) -> HoldView | None:
        h = self._holds.get(hold_id)
        return None if h is None else h.view()

    def cart(self, cart_id: str) -> CartView | None:
        c = self._carts.get(cart_id)
        return None if c is None else c.view()

    def open_cart_of(self, user_id: str) -> CartView | None:
        """The user's open cart (where their next hold goes), if they have one."""
        cart_id = self._open_carts.get(user_id)
        return None if cart_id is None else self._carts[cart_id].view()

    def holds_of_cart(self, cart_id: str) -> list[HoldView]:
        """The holds of a cart not pruned yet, in the order they were placed."""
        c = self._carts.get(cart_id)
        if c is None:
            return []
        return [self._holds[hid].view() for hid in c.hold_ids]

    def order(self, order_id: str) -> OrderView | None:
        o = self._orders.get(order_id)
        return None if o is None else o.view()

    def user_units(self, user_id: str, product_id: str) -> int:
        """Units of a product the user counts against its per-user limit."""
        pair = (user_id, product_id)
        return self._held.get(pair, 0) + self._bought.get(pair, 0)

    def idempotency_keys(self) -> int:
        """How many idempotency keys the ledger remembers now."""
        return len(self._memory)

    def next_deadline_ms(self) -> int | None:
        """The earliest hold expiry or payment deadline still pending, if any."""
        return self._deadlines.first_ms()

    def snapshot_view(self) -> dict[str, JSONValue]:
        """The state a feed consumer starts from: products, active holds, open carts,
        orders not pruned yet and the settings, as JSON-able dicts."""
        return {
            "index": self._index,
            "at_ms": self._now,
            "products": [encode_view(p.view()) for p in self._products.values()],
            "holds": [encode_view(h.view()) for h in self._holds.values() if h.status is _ACTIVE],
            "carts": [
                encode_view(c.view()) for c in self._carts.values() if c.status is CartStatus.OPEN
            ],
            "orders": [encode_view(o.view()) for o in self._orders.values()],
            "settings": self._settings_dict(),
        }

    def _settings_dict(self) -> dict[str, JSONValue]:
        s = self._settings
        return {
            "payment_ttl_ms": s.payment_ttl_ms,
            "retention_ms": s.retention_ms,
            "max_idempotency_keys": s.max_idempotency_keys,
        }

    # ---- invariants and digest ------------------------------------------------------

    def _parts(self) -> StateParts:
        return StateParts(
            now_ms=self._now,
            settings=self._settings,
            products=self._products,
            holds=self._holds,
            carts=self._carts,
            orders=self._orders,
            open_carts=self._open_carts,
            held=self._held,
            bought=self._bought,
            deadlines=self._deadlines,
            memory=self._memory,
        )

    def check_invariants(self) -> None:
        """Recompute every invariant from the records; raise ``InvariantViolation``."""
        problems = state_problems(self._parts())
        if problems:
            raise InvariantViolation(problems)

    def digest(self) -> str:
        """sha256 hex of the canonical state: equal on nodes that applied the same log."""
        cached = self._digest_cache
        if cached is not None and cached[0] == self._index:
            return cached[1]
        value = digest_of(self._canonical_sections())
        self._digest_cache = (self._index, value)
        return value

    def _canonical_sections(self) -> Iterator[tuple[str, Iterator[JSONValue]]]:
        def sorted_values(records: dict[str, Any]) -> Iterator[Any]:
            return (records[k] for k in sorted(records))

        yield (
            "meta",
            iter(
                [
                    self._index,
                    self._now,
                    self._hold_count,
                    self._cart_count,
                    self._order_count,
                    self._settings_dict(),
                ]
            ),
        )
        yield (
            "products",
            (
                [encode_view(p.view()), p.held_units, p.pending_units]
                for p in sorted_values(self._products)
            ),
        )
        yield (
            "holds",
            ([encode_view(h.view()), h.number, h.ended_at_ms] for h in sorted_values(self._holds)),
        )
        yield (
            "carts",
            (
                [encode_view(c.view()), list(c.active), c.had_expired]
                for c in sorted_values(self._carts)
            ),
        )
        yield (
            "orders",
            ([encode_view(o.view()), o.number, o.ended_at_ms] for o in sorted_values(self._orders)),
        )
        yield "open_carts", ([u, self._open_carts[u]] for u in sorted(self._open_carts))
        yield "held", ([u, p, n] for (u, p), n in sorted(self._held.items()))
        yield "bought", ([u, p, n] for (u, p), n in sorted(self._bought.items()))
        # FIFO order is state: it decides which records and keys go first.
        yield "ended", ([at, kind, rid] for at, kind, rid in self._ended)
        yield (
            "keys",
            (
                [key, encode_command(command), encode_result(result), first_ms]
                for key, (command, result, first_ms) in self._memory
            ),
        )

    def _note(self, problem: str, entry: int | None = None) -> None:
        self.violations.append(f"entry {self._index if entry is None else entry}: {problem}")
        if len(self.violations) > MAX_VIOLATIONS:
            del self.violations[: len(self.violations) - MAX_VIOLATIONS]

    # ---- applying batches -----------------------------------------------------------

    def apply(self, at_ms: int, commands: Sequence[Command]) -> Applied:
        """Apply one batch (one Raft entry) of typed commands. Never raises."""
        return self._apply_batch(at_ms, commands)

    def apply_encoded(self, at_ms: int, commands: Sequence[object]) -> Applied:
        """Apply one batch of wire dicts. An undecodable command gets
        ``Rejected(INVALID)`` naming the field (and is not remembered). Never raises."""
        items: list[object] = []
        if isinstance(commands, list | tuple):
            for position, raw in enumerate(commands):
                if position >= MAX_COMMANDS_PER_ENTRY:
                    items.append(raw)  # refused by _apply_batch, not worth decoding
                    continue
                try:
                    items.append(decode_command(raw))
                except DecodeError as exc:
                    items.append(_invalid(f"undecodable command: {exc}"))
                except Exception as exc:  # a bug in the codec: report it, never raise
                    message = f"internal error decoding: {type(exc).__name__}: {exc}"
                    self._note(message, entry=self._index + 1)  # the entry being decoded
                    items.append(_invalid(message))
        return self._apply_batch(at_ms, items)

    def _apply_batch(self, at_ms: object, items: object) -> Applied:
        self._index += 1
        events: list[Event] = []
        self._events = events
        self._touched = {}
        batch_at = at_ms if type(at_ms) is int else 0
        start_now = self._now
        results: list[Result] = []
        if isinstance(items, list | tuple):
            for position, item in enumerate(items):
                if position >= MAX_COMMANDS_PER_ENTRY:
                    results.append(
                        _invalid(f"a batch holds at most {MAX_COMMANDS_PER_ENTRY} commands")
                    )
                else:
                    results.append(self._apply_one(batch_at, item))
        self._after_batch(start_now)
        self._events = []
        return Applied(self._index, tuple(results), tuple(events))

    def _apply_one(self, batch_at: int, item: object) -> Result:
        mark = len(self._events)
        self._expired_holds = self._expired_orders = None
        try:
            handler = _HANDLERS.get(type(item))
            if handler is None:
                self._advance_to(batch_at)
                if type(item) is Rejected:  # undecodable, refused by apply_encoded
                    return item
                return _invalid(f"not a ledger command: {type(item).__name__}")
            command: Any = item
            at = command.at_ms
            at = at if type(at) is int and at > batch_at else batch_at
            if at > self._now:
                self._advance_to(at)
            key = command.key
            if type(key) is not str or not 0 < len(key) <= MAX_ID_LEN:
                return _invalid(f"key must be a string of 1..{MAX_ID_LEN} characters")
            memory = self._memory
            seen = memory.get(key)
            if seen is not None:
                if same_command(seen[0], command):
                    return seen[1]
                return _rejected(
                    Reason.KEY_REUSED, f"key {key!r} was already used for another command", None
                )
            result = handler(self, command)
            if (
                memory.remember(key, command, result, self._now)
                > self._settings.max_idempotency_keys
            ):
                memory.trim_to(self._settings.max_idempotency_keys)
            return result
        except Exception as exc:  # a bug: report it, never wedge the Raft log
            del self._events[mark:]
            message = f"internal error: {type(exc).__name__}: {exc}"
            self._note(message)
            return _invalid(message)

    def _after_batch(self, start_now: int) -> None:
        try:
            for pid in self._touched:
                for problem in product_problems(self._products[pid]):
                    self._note(problem)
            if len(self._memory) > self._settings.max_idempotency_keys:
                self._note(f"idempotency memory holds {len(self._memory)} keys")
            if self._now < start_now:
                self._note(f"ledger time went back from {start_now} to {self._now}")
            self._deadlines.drop_stale(self._is_live)
        except Exception as exc:  # a bug: report it, never wedge the Raft log
            self._note(f"internal error after the batch: {type(exc).__name__}: {exc}")

    def _is_live(self, d: Deadline) -> bool:
        _, kind, _, record_id = d
        if kind == HOLD:
            h = self._holds.get(record_id)
            return h is not None and h.status is _ACTIVE
        o = self._orders.get(record_id)
        return o is not None and o.status is _PENDING

    # ---- time: expiry, forgetting, pruning --------------------------------------------

    def _advance_to(self, at_ms: int) -> None:
        if at_ms <= self._now:
            return
        self._now = at_ms
        if self._deadlines.is_due(at_ms):
            self._expire_due(at_ms)
        self._forget_and_prune()

    def _expire_due(self, now: int) -> None:
        self._expired_holds = expired_holds = []
        self._expired_orders = expired_orders = []
        while (d := self._deadlines.pop_due(now)) is not None:
            _, kind, _, record_id = d
            if kind == HOLD:
                h = self._holds.get(record_id)
                if h is not None and h.status is _ACTIVE:
                    self._end_hold(h, HoldStatus.EXPIRED, "")
                    expired_holds.append(h.hold_id)
            else:
                o = self._orders.get(record_id)
                if o is not None and o.status is _PENDING:
                    o.status = OrderStatus.FAILED
                    o.payment_status = PaymentStatus.FAILED
                    o.failure = "expired"
                    self._close_order(o, "", EventKind.ORDER_EXPIRED, _AVAILABLE)
                    expired_orders.append(o.order_id)

    def _forget_and_prune(self) -> None:
        cutoff = self._now - self._settings.retention_ms
        oldest = self._memory.oldest_ms()
        if oldest is not None and oldest <= cutoff:
            self._memory.forget_through(cutoff)
        ended = self._ended
        while ended and ended[0][0] <= cutoff:
            _, kind, record_id = ended.popleft()
            if kind == HOLD:
                self._prune_hold(record_id)
            else:
                self._prune_order(record_id)

    def _prune_hold(self, hold_id: str) -> None:
        # The cart is still there: a hold ends before its cart's order can end, and both
        # wait in the same FIFO.
        h = self._holds.pop(hold_id)
        cart = self._carts[h.cart_id]
        del cart.hold_ids[hold_id]
        if cart.status is CartStatus.OPEN and not cart.hold_ids:
            # Nothing left to show or check out: the user's next hold opens a new cart.
            del self._carts[cart.cart_id]
            del self._open_carts[cart.user_id]

    def _prune_order(self, order_id: str) -> None:
        # An ordered cart and its ordered holds live and go with their order; its other
        # holds (released or expired before checkout) go on their own schedule.
        o = self._orders.pop(order_id)
        del self._carts[o.cart_id]
        for line in o.lines:
            del self._holds[line.hold_id]

    # ---- shared moves ----------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        key: str,
        *,
        user_id: str = "",
        product_id: str = "",
        hold_id: str = "",
        cart_id: str = "",
        order_id: str = "",
        moves: tuple[Move, ...] = (),
        stock: tuple[StockLevel, ...] = (),
        data: dict[str, JSONValue] | None = None,
    ) -> None:
        events = self._events
        events.append(
            _event(
                self._index,
                len(events),
                self._now,
                kind,
                key,
                user_id,
                product_id,
                hold_id,
                cart_id,
                order_id,
                moves,
                stock,
                data,
            )
        )

    def _stock_transition(self, key: str, p: ProductRecord, available_before: int) -> None:
        """Announce a product running out or coming back, right after the move."""
        after = p.available
        if available_before > 0 and after == 0:
            kind = EventKind.SOLD_OUT
        elif available_before == 0 and after > 0:
            kind = EventKind.BACK_IN_STOCK
        else:
            return
        self._emit(kind, key, product_id=p.product_id, stock=(p.level(),))

    def _take_held(self, pair: UserProduct, units: int) -> None:
        left = self._held[pair] - units
        if left > 0:
            self._held[pair] = left
        else:
            del self._held[pair]
            if left < 0:
                self._note(f"user {pair[0]} would hold {left} units of {pair[1]}")

    def _end_hold(self, h: HoldRecord, status: HoldStatus, key: str) -> None:
        """Release or expire an active hold: its units go back to available."""
        now = self._now
        p = self._products[h.product_id]
        q = h.quantity
        before = p.available
        p.reserved -= q
        p.available += q
        p.held_units -= q
        p.updated_at_ms = now
        self._take_held((h.user_id, h.product_id), q)
        h.status = status
        h.ended_at_ms = now
        cart = self._carts[h.cart_id]
        del cart.active[h.hold_id]
        if status is HoldStatus.EXPIRED:
            cart.had_expired = True
        self._ended.append((now, HOLD, h.hold_id))
        self._touched[p.product_id] = None
        self._emit(
            EventKind.HOLD_EXPIRED if status is HoldStatus.EXPIRED else EventKind.HOLD_RELEASED,
            key,
            user_id=h.user_id,
            product_id=p.product_id,
            hold_id=h.hold_id,
            cart_id=h.cart_id,
            moves=(_move(p.product_id, _RESERVED, _AVAILABLE, q),),
            stock=(p.level(),),
            data={"quantity": q, "expires_at_ms": h.expires_at_ms},
        )
        self._stock_transition(key, p, before)

    def _close_order(self, o: OrderRecord, key: str, kind: EventKind, to: Bucket) -> None:
        """End a pending order whose status the caller set: its units go to ``to``
        (sold when paid, available when it failed or expired)."""
        now = self._now
        before: dict[str, int] = {}
        moves: list[Move] = []
        for line in o.lines:
            pid, q = line.product_id, line.quantity
            p = self._products[pid]
            before.setdefault(pid, p.available)
            p.reserved -= q
            p.pending_units -= q
            p.updated_at_ms = now
            pair = (o.user_id, pid)
            self._take_held(pair, q)
            if to is _SOLD:
                p.sold += q
                _add(self._bought, pair, q)
            else:
                p.available += q
            moves.append(_move(pid, _RESERVED, to, q))
            self._touched[pid] = None
        o.ended_at_ms = now
        self._ended.append((now, ORDER, o.order_id))
        data: dict[str, JSONValue] = {
            "amount_minor": o.amount_minor,
            "currency": o.currency,
            "provider": o.provider,
            "transaction_id": o.transaction_id,
        }
        if o.failure:
            data["failure"] = o.failure
        self._emit(
            kind,
            key,
            user_id=o.user_id,
            cart_id=o.cart_id,
            order_id=o.order_id,
            moves=tuple(moves),
            stock=tuple(self._products[pid].level() for pid in before),
            data=data,
        )
        for pid, available_before in before.items():
            self._stock_transition(key, self._products[pid], available_before)

    # ---- command handlers --------------------------------------------------------------
    # Each checks everything first, then mutates; it returns the command's result.

    def _reserve(self, c: Reserve) -> Result:
        # The hot path of a sale: keep it free of needless calls and allocations.
        user, pid, q = c.user_id, c.product_id, c.quantity
        p = self._products.get(pid) if type(pid) is str else None
        if p is None or not is_id(user):
            problem = id_problem("user_id", user) or id_problem("product_id", pid)
            if problem is not None:
                return self._refuse_reserve(c, Reason.INVALID, problem)
            return self._refuse_reserve(c, Reason.UNKNOWN_PRODUCT, f"no product {pid!r}")
        now = self._now
        if p.opens_at_ms is not None and now < p.opens_at_ms:
            return self._refuse_reserve(
                c, Reason.NOT_OPEN, f"the sale of {pid} opens at {p.opens_at_ms}"
            )
        if p.closes_at_ms is not None and now >= p.closes_at_ms:
            return self._refuse_reserve(
                c, Reason.CLOSED, f"the sale of {pid} closed at {p.closes_at_ms}"
            )
        if type(q) is not int or not 1 <= q <= MAX_QUANTITY:
            return self._refuse_reserve(
                c, Reason.INVALID, f"quantity must be an integer in 1..{MAX_QUANTITY}, got {q!r}"
            )
        pair = (user, pid)
        limit = p.per_user_limit
        if limit is not None:
            counted = self._held.get(pair, 0) + self._bought.get(pair, 0)
            if counted + q > limit:
                return self._refuse_reserve(
                    c,
                    Reason.LIMIT_REACHED,
                    f"{user} may have at most {limit} units of {pid} and has {counted}",
                )
        available = p.available
        if available < q:
            return self._refuse_reserve(
                c,
                Reason.SOLD_OUT,
                f"{q} units of {pid} asked, {available} available",
                available,
            )
        cart_id = self._open_carts.get(user)
        cart = None if cart_id is None else self._carts[cart_id]
        if cart is not None and len(cart.active) >= MAX_HOLDS_PER_CART:
            return self._refuse_reserve(
                c,
                Reason.LIMIT_REACHED,
                f"cart {cart_id} already has {MAX_HOLDS_PER_CART} active holds",
            )
        # All checks passed: mutate.
        if cart is None:
            self._cart_count += 1
            cart_id = f"c{self._cart_count}"
            cart = CartRecord(cart_id, user)
            self._carts[cart_id] = cart
            self._open_carts[user] = cart_id
        else:
            cart_id = cart.cart_id
        self._hold_count = n = self._hold_count + 1
        hold_id = f"h{n}"
        expires = now + p.hold_ttl_ms
        self._holds[hold_id] = HoldRecord(hold_id, n, cart_id, user, pid, q, now, expires)
        cart.hold_ids[hold_id] = None
        cart.active[hold_id] = None
        p.available = available - q
        p.reserved += q
        p.held_units += q
        p.updated_at_ms = now
        self._held[pair] = self._held.get(pair, 0) + q
        self._deadlines.push(expires, HOLD, n, hold_id)
        self._touched[pid] = None
        events = self._events
        events.append(
            _event(
                self._index,
                len(events),
                now,
                _HOLD_PLACED,
                c.key,
                user,
                pid,
                hold_id,
                cart_id,
                "",
                _reserve_moves(pid, q),
                (p.level(),),
                {"quantity": q, "expires_at_ms": expires},
            )
        )
        if p.available == 0:
            self._emit(EventKind.SOLD_OUT, c.key, product_id=pid, stock=(p.level(),))
        return _hold_placed(hold_id, cart_id, user, pid, q, expires)

    def _refuse_reserve(
        self, c: Reserve, reason: Reason, message: str, available: int | None = None
    ) -> Rejected:
        # The notifier and the first-come-first-served checker read refusals from the feed.
        # Once a product sells out this is the hot path: build the event directly.
        data: dict[str, JSONValue] = {
            "reason": reason.value,
            "quantity": c.quantity if type(c.quantity) is int else None,
        }
        if available is not None:
            data["available"] = available
        events = self._events
        events.append(
            _event(
                self._index,
                len(events),
                self._now,
                _RESERVE_REFUSED,
                c.key,
                c.user_id if type(c.user_id) is str else "",
                c.product_id if type(c.product_id) is str else "",
                "",
                "",
                "",
                (),
                (),
                data,
            )
        )
        return _rejected(reason, message, available)

    def _release(self, c: Release) -> Result:
        problem = id_problem("user_id", c.user_id) or id_problem("hold_id", c.hold_id)
        if problem is not None:
            return _invalid(problem)
        h = self._holds.get(c.hold_id)
        if h is None:
            return _rejected(Reason.UNKNOWN_HOLD, f"no hold {c.hold_id!r}", None)
        if h.user_id != c.user_id:
            return _rejected(Reason.NOT_OWNER, f"hold {h.hold_id} is not {c.user_id}'s", None)
        if h.status is HoldStatus.EXPIRED:
            return _rejected(
                Reason.HOLD_EXPIRED, f"hold {h.hold_id} expired at {h.expires_at_ms}", None
            )
        if h.status is HoldStatus.RELEASED:
            return _invalid(f"hold {h.hold_id} was already released")
        if h.status is HoldStatus.ORDERED:
            order_id = self._carts[h.cart_id].order_id
            return _invalid(f"hold {h.hold_id} belongs to order {order_id}")
        self._end_hold(h, HoldStatus.RELEASED, c.key)
        return HoldReleased(hold_id=h.hold_id, product_id=h.product_id, quantity=h.quantity)

    def _checkout(self, c: Checkout) -> Result:
        problem = (
            id_problem("user_id", c.user_id)
            or id_problem("cart_id", c.cart_id)
            or text_problem("payment_method", c.payment_method)
            or text_problem("sealed_details", c.sealed_details)
        )
        if problem is not None:
            return _invalid(problem)
        cart = self._carts.get(c.cart_id)
        if cart is None:
            return _rejected(Reason.UNKNOWN_CART, f"no cart {c.cart_id!r}", None)
        if cart.user_id != c.user_id:
            return _rejected(Reason.NOT_OWNER, f"cart {cart.cart_id} is not {c.user_id}'s", None)
        if cart.status is CartStatus.ORDERED:
            return _rejected(
                Reason.ALREADY_EXISTS,
                f"cart {cart.cart_id} was already checked out as order {cart.order_id}",
                None,
            )
        if not cart.active:
            if cart.had_expired:
                return _rejected(
                    Reason.HOLD_EXPIRED, f"the holds of cart {cart.cart_id} expired", None
                )
            return _rejected(Reason.EMPTY_CART, f"cart {cart.cart_id} has no active hold", None)
        holds = [self._holds[hid] for hid in cart.active]
        lines = tuple(
            OrderLine(
                product_id=h.product_id,
                quantity=h.quantity,
                unit_price_minor=self._products[h.product_id].price_minor,
                hold_id=h.hold_id,
            )
            for h in holds
        )
        currencies = sorted({self._products[h.product_id].currency for h in holds})
        if len(currencies) > 1:
            return _invalid(f"cart {cart.cart_id} mixes currencies {', '.join(currencies)}")
        # All checks passed: mutate.
        now = self._now
        self._order_count = n = self._order_count + 1
        order_id = f"o{n}"
        amount = sum(line.quantity * line.unit_price_minor for line in lines)
        pay_by = now + self._settings.payment_ttl_ms
        for h in holds:
            h.status = HoldStatus.ORDERED
            p = self._products[h.product_id]
            p.held_units -= h.quantity
            p.pending_units += h.quantity
            p.updated_at_ms = now
            self._touched[h.product_id] = None
        cart.active.clear()
        cart.status = CartStatus.ORDERED
        cart.order_id = order_id
        del self._open_carts[cart.user_id]
        o = OrderRecord(
            order_id=order_id,
            number=n,
            cart_id=cart.cart_id,
            user_id=cart.user_id,
            lines=lines,
            amount_minor=amount,
            currency=currencies[0],
            created_at_ms=now,
            pay_by_ms=pay_by,
            payment_method=c.payment_method,
            sealed_details=c.sealed_details,
        )
        self._orders[order_id] = o
        self._deadlines.push(pay_by, ORDER, n, order_id)
        self._emit(
            EventKind.ORDER_PLACED,
            c.key,
            user_id=o.user_id,
            cart_id=o.cart_id,
            order_id=order_id,
            data={
                "amount_minor": amount,
                "currency": o.currency,
                "pay_by_ms": pay_by,
                "payment_method": o.payment_method,
                "sealed_details": o.sealed_details,
                "lines": [encode_view(line) for line in lines],
            },
        )
        return OrderPlaced(
            order_id=order_id,
            cart_id=o.cart_id,
            user_id=o.user_id,
            lines=lines,
            amount_minor=amount,
            currency=o.currency,
            pay_by_ms=pay_by,
        )

    def _record_payment(self, c: RecordPayment) -> Result:
        problem = (
            id_problem("order_id", c.order_id)
            or (
                None
                if isinstance(c.outcome, PaymentOutcome)
                else f"outcome must be one of {', '.join(PaymentOutcome)}"
            )
            or int_problem("amount_minor", c.amount_minor, 0, MAX_AMOUNT_MINOR)
            or text_problem("provider", c.provider)
            or text_problem("transaction_id", c.transaction_id)
        )
        if problem is not None:
            return _invalid(problem)
        o = self._orders.get(c.order_id)
        if o is None:
            return _rejected(Reason.UNKNOWN_ORDER, f"no order {c.order_id!r}", None)
        if c.amount_minor != o.amount_minor:
            return _rejected(
                Reason.AMOUNT_MISMATCH,
                f"order {o.order_id} is for {o.amount_minor} {o.currency}, not {c.amount_minor}",
                None,
            )
        if o.status is not _PENDING:
            if o.failure == "expired" and c.outcome is PaymentOutcome.PAID:
                # The gateway refunds: the units went back to the sale at the deadline.
                return _rejected(
                    Reason.HOLD_EXPIRED,
                    f"order {o.order_id} was not paid by {o.pay_by_ms} and expired",
                    None,
                )
            return _rejected(
                Reason.NOT_PENDING, f"order {o.order_id} is already {o.status.value}", None
            )
        o.payment_attempts += 1
        o.provider = c.provider
        o.transaction_id = c.transaction_id
        if c.outcome is PaymentOutcome.PAID:
            o.status = OrderStatus.COMPLETED
            o.payment_status = PaymentStatus.PAID
            self._close_order(o, c.key, EventKind.ORDER_COMPLETED, _SOLD)
        elif c.outcome is PaymentOutcome.FAILED:
            o.status = OrderStatus.FAILED
            o.payment_status = PaymentStatus.FAILED
            o.failure = "payment_failed"
            self._close_order(o, c.key, EventKind.ORDER_FAILED, _AVAILABLE)
        else:
            self._emit(
                EventKind.PAYMENT_DECLINED,
                c.key,
                user_id=o.user_id,
                cart_id=o.cart_id,
                order_id=o.order_id,
                data={
                    "amount_minor": o.amount_minor,
                    "currency": o.currency,
                    "attempts": o.payment_attempts,
                    "provider": o.provider,
                    "transaction_id": o.transaction_id,
                },
            )
        return PaymentRecorded(
            order_id=o.order_id,
            outcome=c.outcome,
            status=o.status,
            payment_status=o.payment_status,
            amount_minor=o.amount_minor,
            transaction_id=o.transaction_id,
        )

    def _expire(self, c: Expire) -> Result:
        # The time step before this command did the work; report what it expired.
        return Expired(
            hold_ids=tuple(self._expired_holds or ()),
            order_ids=tuple(self._expired_orders or ()),
        )

    def _create_product(self, c: CreateProduct) -> Result:
        problem = id_problem("product_id", c.product_id)
        if problem is not None:
            return _invalid(problem)
        if c.product_id in self._products:
            return _rejected(Reason.ALREADY_EXISTS, f"product {c.product_id} exists", None)
        problem = (
            name_problem(c.name)
            or price_problem(c.price_minor)
            or currency_problem(c.currency)
            or stock_problem(c.total_stock)
            or time_problem("opens_at_ms", c.opens_at_ms)
            or time_problem("closes_at_ms", c.closes_at_ms)
            or limit_problem(c.per_user_limit)
            or hold_ttl_problem(c.hold_ttl_ms)
            or window_problem(c.opens_at_ms, c.closes_at_ms)
        )
        if problem is not None:
            return _invalid(problem)
        p = ProductRecord(
            product_id=c.product_id,
            name=c.name,
            price_minor=c.price_minor,
            currency=c.currency,
            total_stock=c.total_stock,
            available=c.total_stock,
            reserved=0,
            sold=0,
            opens_at_ms=c.opens_at_ms,
            closes_at_ms=c.closes_at_ms,
            per_user_limit=c.per_user_limit,
            hold_ttl_ms=c.hold_ttl_ms,
            updated_at_ms=self._now,
        )
        self._products[p.product_id] = p
        self._touched[p.product_id] = None
        view = p.view()
        moves = (_move(p.product_id, _OUTSIDE, _AVAILABLE, p.total_stock),) if p.total_stock else ()
        self._emit(
            EventKind.PRODUCT_CREATED,
            c.key,
            product_id=p.product_id,
            moves=moves,
            stock=(p.level(),),
            data=encode_view(view),
        )
        return ProductSaved(product=view)

    def _update_product(self, c: UpdateProduct) -> Result:
        problem = id_problem("product_id", c.product_id)
        if problem is not None:
            return _invalid(problem)
        p = self._products.get(c.product_id)
        if p is None:
            return _rejected(Reason.UNKNOWN_PRODUCT, f"no product {c.product_id!r}", None)
        clears = (
            ("opens_at_ms", c.clear_opens, c.opens_at_ms),
            ("closes_at_ms", c.clear_closes, c.closes_at_ms),
            ("per_user_limit", c.clear_limit, c.per_user_limit),
        )
        for field, clear, value in clears:
            if clear and value is not None:
                return _invalid(f"{field} is both set and cleared")
        problem = (
            (None if c.name is None else name_problem(c.name))
            or (None if c.price_minor is None else price_problem(c.price_minor))
            or time_problem("opens_at_ms", c.opens_at_ms)
            or time_problem("closes_at_ms", c.closes_at_ms)
            or limit_problem(c.per_user_limit)
            or (None if c.hold_ttl_ms is None else hold_ttl_problem(c.hold_ttl_ms))
        )
        if problem is not None:
            return _invalid(problem)
        changes = (
            c.name,
            c.price_minor,
            c.opens_at_ms,
            c.closes_at_ms,
            c.per_user_limit,
            c.hold_ttl_ms,
        )
        if all(v is None for v in changes) and not (
            c.clear_opens or c.clear_closes or c.clear_limit
        ):
            return _invalid("the update changes nothing")
        opens = (
            None
            if c.clear_opens
            else (c.opens_at_ms if c.opens_at_ms is not None else p.opens_at_ms)
        )
        closes = (
            None
            if c.clear_closes
            else (c.closes_at_ms if c.closes_at_ms is not None else p.closes_at_ms)
        )
        problem = window_problem(opens, closes)
        if problem is not None:
            return _invalid(problem)
        # All checks passed: mutate.
        if c.name is not None:
            p.name = c.name
        if c.price_minor is not None:
            p.price_minor = c.price_minor
        if c.hold_ttl_ms is not None:
            p.hold_ttl_ms = c.hold_ttl_ms
        if c.clear_limit:
            p.per_user_limit = None
        elif c.per_user_limit is not None:
            p.per_user_limit = c.per_user_limit
        p.opens_at_ms = opens
        p.closes_at_ms = closes
        p.updated_at_ms = self._now
        self._touched[p.product_id] = None
        view = p.view()
        self._emit(
            EventKind.PRODUCT_UPDATED,
            c.key,
            product_id=p.product_id,
            stock=(p.level(),),
            data=encode_view(view),
        )
        return ProductSaved(product=view)

    def _restock(self, c: Restock) -> Result:
        q = c.quantity
        problem = id_problem("product_id", c.product_id) or int_problem(
            "quantity", q, -MAX_STOCK, MAX_STOCK
        )
        if problem is None and q == 0:
            problem = "quantity must not be 0"
        if problem is not None:
            return _invalid(problem)
        p = self._products.get(c.product_id)
        if p is None:
            return _rejected(Reason.UNKNOWN_PRODUCT, f"no product {c.product_id!r}", None)
        if q > 0 and p.total_stock + q > MAX_STOCK:
            return _invalid(f"total_stock {p.total_stock} + {q} would exceed {MAX_STOCK}")
        if q < 0 and -q > p.available:
            return _invalid(
                f"cannot withdraw {-q} units of {p.product_id}: only {p.available} available"
            )
        # All checks passed: mutate.
        before = p.available
        p.total_stock += q
        p.available += q
        p.updated_at_ms = self._now
        self._touched[p.product_id] = None
        move = (
            _move(p.product_id, _OUTSIDE, _AVAILABLE, q)
            if q > 0
            else _move(p.product_id, _AVAILABLE, _OUTSIDE, -q)
        )
        self._emit(
            EventKind.RESTOCKED,
            c.key,
            product_id=p.product_id,
            moves=(move,),
            stock=(p.level(),),
            data={"quantity": q},
        )
        self._stock_transition(c.key, p, before)
        return Restocked(product_id=p.product_id, total_stock=p.total_stock, available=p.available)

    def _configure(self, c: Configure) -> Result:
        old = self._settings
        changes = (c.payment_ttl_ms, c.retention_ms, c.max_idempotency_keys)
        if all(v is None for v in changes):
            return _invalid("the configuration changes nothing")
        values = [
            old_value if new is None else new
            for new, old_value in zip(
                changes,
                (old.payment_ttl_ms, old.retention_ms, old.max_idempotency_keys),
                strict=True,
            )
        ]
        problem = settings_problem(*values)
        if problem is not None:
            return _invalid(problem)
        self._settings = Settings(
            payment_ttl_ms=values[0], retention_ms=values[1], max_idempotency_keys=values[2]
        )
        # A shorter retention or a lower cap takes effect at once.
        self._forget_and_prune()
        self._memory.trim_to(self._settings.max_idempotency_keys)
        self._emit(EventKind.SETTINGS_CHANGED, c.key, data=self._settings_dict())
        return Configured(
            payment_ttl_ms=values[0], retention_ms=values[1], max_idempotency_keys=values[2]
        )


_HANDLERS: dict[type[Any], Callable[[Ledger, Any], Result]] = {
    Reserve: Ledger._reserve,
    Release: Ledger._release,
    Checkout: Ledger._checkout,
    RecordPayment: Ledger._record_payment,
    Expire: Ledger._expire,
    CreateProduct: Ledger._create_product,
    UpdateProduct: Ledger._update_product,
    Restock: Ledger._restock,
    Configure: Ledger._configure,
}
