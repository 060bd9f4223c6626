"""The ledger against a tiny, obviously-right model (hypothesis stateful test).

The model keeps plain dicts and recomputes everything by scanning: per product the
available/reserved/sold units, every hold, cart and order, what each user counts against
a per-user limit, and the idempotency keys. Every step applies one command (or a small
batch) to the real ledger and to the model, compares the result, the stock of every
product and the status of every record, and then checks every ledger invariant
(``check_invariants``). Time moves in jumps that cross hold TTLs, payment deadlines and
the retention time, and sometimes goes "back" (a lagging clock the ledger must ignore).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger import (
    Checkout,
    Command,
    CreateProduct,
    Expire,
    Expired,
    HoldPlaced,
    HoldReleased,
    HoldStatus,
    Ledger,
    OrderLine,
    OrderPlaced,
    OrderStatus,
    PaymentOutcome,
    PaymentRecorded,
    PaymentStatus,
    Reason,
    RecordPayment,
    Rejected,
    Release,
    Reserve,
    Restock,
    Restocked,
    Result,
    Settings,
)
from ledger.idempotency import same_command

T0 = 1_700_000_000_000
PAY_TTL = 4_000
RETENTION = 20_000
MAX_KEYS = 40
USERS = ["u1", "u2", "u3", "u4", "u5"]
PRODUCTS = ["p0", "p1", "p2"]


@dataclass
class MProduct:
    total: int
    available: int
    limit: int | None
    ttl: int
    price: int
    reserved: int = 0
    sold: int = 0


@dataclass
class MHold:
    number: int
    user: str
    product: str
    quantity: int
    cart: str
    expires: int
    status: HoldStatus = HoldStatus.ACTIVE
    ended: int | None = None


@dataclass
class MCart:
    user: str
    holds: list[str] = field(default_factory=list)
    order: str | None = None
    had_expired: bool = False


@dataclass
class MOrder:
    number: int
    user: str
    cart: str
    lines: list[tuple[str, int, int, str]]  # product, quantity, unit price, hold
    pay_by: int
    status: OrderStatus = OrderStatus.PENDING
    failure: str = ""
    ended: int | None = None

    @property
    def amount(self) -> int:
        return sum(q * price for _, q, price, _ in self.lines)


class Model:
    """What the ledger should do, written the slow and obvious way."""

    def __init__(self) -> None:
        self.now = 0
        self.products: dict[str, MProduct] = {}
        self.holds: dict[str, MHold] = {}
        self.carts: dict[str, MCart] = {}
        self.orders: dict[str, MOrder] = {}
        self.bought: dict[tuple[str, str], int] = {}
        self.keys: dict[str, tuple[Command, Result, int]] = {}  # insertion order = age
        self.n_holds = self.n_carts = self.n_orders = 0
        self.expired_now: tuple[list[str], list[str]] = ([], [])

    # -- time ----------------------------------------------------------------------------

    def advance(self, at_ms: int) -> None:
        self.expired_now = ([], [])
        if at_ms <= self.now:
            return
        self.now = at_ms
        due_holds = sorted((h.expires, h.number, hid) for hid, h in self.holds.items()
                           if h.status is HoldStatus.ACTIVE and h.expires <= at_ms)
        for _, _, hid in due_holds:
            self.end_hold(hid, HoldStatus.EXPIRED)
            self.expired_now[0].append(hid)
        due_orders = sorted((o.pay_by, o.number, oid) for oid, o in self.orders.items()
                            if o.status is OrderStatus.PENDING and o.pay_by <= at_ms)
        for _, _, oid in due_orders:
            self.end_order(oid, paid=False, failure="expired")
            self.expired_now[1].append(oid)
        cutoff = at_ms - RETENTION
        for key in [k for k, (_, _, first) in self.keys.items() if first <= cutoff]:
            del self.keys[key]
        for hid in [hid for hid, h in self.holds.items()
                    if h.ended is not None and h.ended <= cutoff]:
            hold = self.holds.pop(hid)
            cart = self.carts[hold.cart]
            cart.holds.remove(hid)
            if cart.order is None and not cart.holds:
                del self.carts[hold.cart]
        for oid in [oid for oid, o in self.orders.items()
                    if o.ended is not None and o.ended <= cutoff]:
            order = self.orders.pop(oid)
            del self.carts[order.cart]
            for _, _, _, hid in order.lines:
                del self.holds[hid]

    def end_hold(self, hid: str, status: HoldStatus) -> None:
        hold = self.holds[hid]
        p = self.products[hold.product]
        p.reserved -= hold.quantity
        p.available += hold.quantity
        hold.status, hold.ended = status, self.now
        if status is HoldStatus.EXPIRED:
            self.carts[hold.cart].had_expired = True

    def end_order(self, oid: str, *, paid: bool, failure: str = "") -> None:
        order = self.orders[oid]
        for pid, q, _, _ in order.lines:
            p = self.products[pid]
            p.reserved -= q
            if paid:
                p.sold += q
                self.bought[(order.user, pid)] = self.bought.get((order.user, pid), 0) + q
            else:
                p.available += q
        order.status = OrderStatus.COMPLETED if paid else OrderStatus.FAILED
        order.failure, order.ended = failure, self.now

    # -- questions ---------------------------------------------------------------------------

    def counted(self, user: str, pid: str) -> int:
        units = self.bought.get((user, pid), 0)
        units += sum(h.quantity for h in self.holds.values()
                     if h.status is HoldStatus.ACTIVE and (h.user, h.product) == (user, pid))
        units += sum(q for o in self.orders.values() if o.status is OrderStatus.PENDING
                     and o.user == user for p, q, _, _ in o.lines if p == pid)
        return units

    def open_cart(self, user: str) -> str | None:
        for cid, cart in self.carts.items():
            if cart.user == user and cart.order is None:
                return cid
        return None

    # -- commands: the expected result, after the model applied it -------------------------

    def reserve(self, c: Reserve) -> Result | Reason:
        p = self.products.get(c.product_id)
        if p is None:
            return Reason.UNKNOWN_PRODUCT
        if not 1 <= c.quantity <= 10_000:
            return Reason.INVALID
        if p.limit is not None and self.counted(c.user_id, c.product_id) + c.quantity > p.limit:
            return Reason.LIMIT_REACHED
        if p.available < c.quantity:
            return Reason.SOLD_OUT
        cart_id = self.open_cart(c.user_id)
        if cart_id is None:
            self.n_carts += 1
            cart_id = f"c{self.n_carts}"
            self.carts[cart_id] = MCart(user=c.user_id)
        self.n_holds += 1
        hid = f"h{self.n_holds}"
        self.holds[hid] = MHold(self.n_holds, c.user_id, c.product_id, c.quantity, cart_id,
                                self.now + p.ttl)
        self.carts[cart_id].holds.append(hid)
        p.available -= c.quantity
        p.reserved += c.quantity
        return HoldPlaced(hold_id=hid, cart_id=cart_id, user_id=c.user_id,
                          product_id=c.product_id, quantity=c.quantity,
                          expires_at_ms=self.now + p.ttl)

    def release(self, c: Release) -> Result | Reason:
        hold = self.holds.get(c.hold_id)
        if hold is None:
            return Reason.UNKNOWN_HOLD
        if hold.user != c.user_id:
            return Reason.NOT_OWNER
        if hold.status is HoldStatus.EXPIRED:
            return Reason.HOLD_EXPIRED
        if hold.status is not HoldStatus.ACTIVE:
            return Reason.INVALID
        self.end_hold(c.hold_id, HoldStatus.RELEASED)
        return HoldReleased(hold_id=c.hold_id, product_id=hold.product, quantity=hold.quantity)

    def checkout(self, c: Checkout) -> Result | Reason:
        cart = self.carts.get(c.cart_id)
        if cart is None:
            return Reason.UNKNOWN_CART
        if cart.user != c.user_id:
            return Reason.NOT_OWNER
        if cart.order is not None:
            return Reason.ALREADY_EXISTS
        active = [hid for hid in cart.holds if self.holds[hid].status is HoldStatus.ACTIVE]
        if not active:
            return Reason.HOLD_EXPIRED if cart.had_expired else Reason.EMPTY_CART
        self.n_orders += 1
        oid = f"o{self.n_orders}"
        lines = []
        for hid in active:
            hold = self.holds[hid]
            hold.status = HoldStatus.ORDERED
            lines.append((hold.product, hold.quantity, self.products[hold.product].price, hid))
        order = MOrder(self.n_orders, c.user_id, c.cart_id, lines, self.now + PAY_TTL)
        self.orders[oid] = order
        cart.order = oid
        return OrderPlaced(
            order_id=oid, cart_id=c.cart_id, user_id=c.user_id,
            lines=tuple(OrderLine(product_id=p, quantity=q, unit_price_minor=price, hold_id=h)
                        for p, q, price, h in lines),
            amount_minor=order.amount, currency="USD", pay_by_ms=order.pay_by)

    def pay(self, c: RecordPayment) -> Result | Reason:
        order = self.orders.get(c.order_id)
        if order is None:
            return Reason.UNKNOWN_ORDER
        if c.amount_minor != order.amount:
            return Reason.AMOUNT_MISMATCH
        if order.status is not OrderStatus.PENDING:
            if order.failure == "expired" and c.outcome is PaymentOutcome.PAID:
                return Reason.HOLD_EXPIRED
            return Reason.NOT_PENDING
        if c.outcome is PaymentOutcome.PAID:
            self.end_order(c.order_id, paid=True)
            status, payment = OrderStatus.COMPLETED, PaymentStatus.PAID
        elif c.outcome is PaymentOutcome.FAILED:
            self.end_order(c.order_id, paid=False, failure="payment_failed")
            status, payment = OrderStatus.FAILED, PaymentStatus.FAILED
        else:
            status, payment = OrderStatus.PENDING, PaymentStatus.PENDING
        return PaymentRecorded(order_id=c.order_id, outcome=c.outcome, status=status,
                               payment_status=payment, amount_minor=order.amount,
                               transaction_id=c.transaction_id)

    def restock(self, c: Restock) -> Result | Reason:
        p = self.products.get(c.product_id)
        if c.quantity == 0:
            return Reason.INVALID
        if p is None:
            return Reason.UNKNOWN_PRODUCT
        if c.quantity < 0 and -c.quantity > p.available:
            return Reason.INVALID
        p.total += c.quantity
        p.available += c.quantity
        return Restocked(product_id=c.product_id, total_stock=p.total, available=p.available)

    def apply(self, at_ms: int, c: Command) -> Result | Reason:
        self.advance(at_ms)
        seen = self.keys.get(c.key)
        if seen is not None:
            return seen[1] if same_command(seen[0], c) else Reason.KEY_REUSED
        if isinstance(c, Reserve):
            expected = self.reserve(c)
        elif isinstance(c, Release):
            expected = self.release(c)
        elif isinstance(c, Checkout):
            expected = self.checkout(c)
        elif isinstance(c, RecordPayment):
            expected = self.pay(c)
        elif isinstance(c, Restock):
            expected = self.restock(c)
        else:
            assert isinstance(c, Expire)
            expected = Expired(hold_ids=tuple(self.expired_now[0]),
                               order_ids=tuple(self.expired_now[1]))
        return expected

    def remember(self, c: Command, actual: Result) -> None:
        if c.key not in self.keys:
            self.keys[c.key] = (c, actual, self.now)
            while len(self.keys) > MAX_KEYS:
                del self.keys[next(iter(self.keys))]


def matches(expected: Result | Reason, actual: Result) -> bool:
    if isinstance(expected, Reason):
        return isinstance(actual, Rejected) and actual.reason is expected
    return actual == expected


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.led = Ledger(Settings(payment_ttl_ms=PAY_TTL, retention_ms=RETENTION,
                                   max_idempotency_keys=MAX_KEYS))
        self.model = Model()
        self.clock = T0
        self.n_keys = 0
        self.sent: list[Command] = []

    @initialize(
        stocks=st.lists(st.integers(0, 5), min_size=3, max_size=3),
        limits=st.lists(st.none() | st.integers(1, 3), min_size=3, max_size=3),
        ttls=st.lists(st.sampled_from([1_000, 2_500, 6_000]), min_size=3, max_size=3),
    )
    def create_products(self, stocks: list[int], limits: list[int | None],
                        ttls: list[int]) -> None:
        batch = [
            CreateProduct(key=f"create-{pid}", product_id=pid, name=pid, price_minor=100 + i,
                          total_stock=stocks[i], per_user_limit=limits[i], hold_ttl_ms=ttls[i])
            for i, pid in enumerate(PRODUCTS)
        ]
        applied = self.led.apply(self.clock, batch)
        assert all(not isinstance(r, Rejected) for r in applied.results)
        self.model.advance(self.clock)
        for c, r in zip(batch, applied.results, strict=True):
            self.model.products[c.product_id] = MProduct(
                total=c.total_stock, available=c.total_stock, limit=c.per_user_limit,
                ttl=c.hold_ttl_ms, price=c.price_minor)
            self.model.remember(c, r)

    # -- helpers -------------------------------------------------------------------------------

    def key(self, reuse: int | None) -> str:
        if reuse is not None and self.n_keys:
            return f"k{max(1, self.n_keys - reuse)}"  # a recent key again: collision
        self.n_keys += 1
        return f"k{self.n_keys}"

    def run(self, *commands: Command) -> None:
        applied = self.led.apply(self.clock, list(commands))
        assert applied.index == self.led.index
        assert all(e.index == applied.index for e in applied.events)
        assert [e.seq for e in applied.events] == list(range(len(applied.events)))
        for c, actual in zip(commands, applied.results, strict=True):
            expected = self.model.apply(self.clock, c)
            assert matches(expected, actual), (c, expected, actual)
            if not (isinstance(actual, Rejected) and actual.reason is Reason.KEY_REUSED):
                self.model.remember(c, actual)
            self.sent.append(c)

    # -- rules -------------------------------------------------------------------------------

    @rule(jump=st.sampled_from([0, 1, 400, 1_000, 2_500, 4_000, 9_000, 21_000, -3_000]))
    def time_passes(self, jump: int) -> None:
        self.clock += jump  # a negative jump is a lagging leader clock: ignored by the ledger

    @rule(user=st.sampled_from(USERS), pid=st.sampled_from([*PRODUCTS, "nope"]),
          quantity=st.integers(0, 3), reuse=st.none() | st.integers(0, 3))
    def reserve(self, user: str, pid: str, quantity: int, reuse: int | None) -> None:
        self.run(Reserve(key=self.key(reuse), user_id=user, product_id=pid, quantity=quantity))

    @rule(users=st.lists(st.sampled_from(USERS), min_size=2, max_size=4),
          pid=st.sampled_from(PRODUCTS))
    def reserve_rush(self, users: list[str], pid: str) -> None:
        self.run(*[Reserve(key=self.key(None), user_id=u, product_id=pid, quantity=1)
                   for u in users])

    @rule(user=st.sampled_from(USERS), pick=st.none() | st.integers(0, 30))
    def release(self, user: str, pick: int | None) -> None:
        # Mostly a hold the model knows (of anyone: wrong owners are refused), else any id.
        holds = sorted(self.model.holds, key=lambda h: self.model.holds[h].number)
        if pick is not None and holds:
            hold_id = holds[pick % len(holds)]
            user = self.model.holds[hold_id].user if pick % 4 else user
        else:
            hold_id = f"h{(pick or 0) + 1}"
        self.run(Release(key=self.key(None), user_id=user, hold_id=hold_id))

    @rule(user=st.sampled_from(USERS), cart=st.none() | st.integers(1, 8))
    def checkout(self, user: str, cart: int | None) -> None:
        # Mostly the user's own open cart, sometimes any cart id (someone else's, unknown).
        cart_id = self.model.open_cart(user) if cart is None else f"c{cart}"
        self.run(Checkout(key=self.key(None), user_id=user, cart_id=cart_id or "c1"))

    @rule(pick=st.integers(0, 30), outcome=st.sampled_from(list(PaymentOutcome)),
          off_by=st.sampled_from([0, 0, 0, 1]))
    def pay(self, pick: int, outcome: PaymentOutcome, off_by: int) -> None:
        orders = sorted(self.model.orders, key=lambda o: self.model.orders[o].number)
        order_id = orders[pick % len(orders)] if orders and pick < 25 else f"o{pick}"
        known = self.model.orders.get(order_id)
        amount = (known.amount if known else 100) + off_by
        self.run(RecordPayment(key=self.key(None), order_id=order_id, outcome=outcome,
                               amount_minor=amount, transaction_id="tx"))

    @rule(pid=st.sampled_from(PRODUCTS), quantity=st.integers(-2, 3))
    def restock(self, pid: str, quantity: int) -> None:
        self.run(Restock(key=self.key(None), product_id=pid, quantity=quantity))

    @rule()
    def expire(self) -> None:
        self.run(Expire(key=self.key(None)))

    @rule(back=st.integers(1, 10))
    def retry(self, back: int) -> None:
        if self.sent:
            self.run(self.sent[-min(back, len(self.sent))])

    @rule()
    def snapshot_and_restore(self) -> None:
        copy = pickle.loads(pickle.dumps(self.led, protocol=2))
        assert copy.digest() == self.led.digest()
        self.led = copy

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def books_match_the_model(self) -> None:
        led, model = self.led, self.model
        for pid, p in model.products.items():
            view = led.product(pid)
            assert view is not None
            assert (view.total_stock, view.available, view.reserved, view.sold) == (
                p.total, p.available, p.reserved, p.sold), pid
            assert view.available + view.reserved + view.sold == view.total_stock
            for user in USERS:
                assert led.user_units(user, pid) == model.counted(user, pid)
                if p.limit is not None:
                    assert model.counted(user, pid) <= p.limit
        for hid, h in model.holds.items():
            hold = led.hold(hid)
            assert hold is not None and hold.status is h.status, hid
        for oid, o in model.orders.items():
            order = led.order(oid)
            assert order is not None and order.status is o.status, oid
            assert order.amount_minor == o.amount
        assert {c for c in model.carts} == {
            c for c in (f"c{i}" for i in range(1, model.n_carts + 1)) if led.cart(c)}
        assert led.hold(f"h{model.n_holds + 1}") is None
        assert led.idempotency_keys() == len(model.keys)

    @invariant()
    def ledger_invariants_hold(self) -> None:
        self.led.check_invariants()
        assert self.led.violations == []

    @invariant()
    def next_deadline_is_the_earliest_live_one(self) -> None:
        deadlines = [h.expires for h in self.model.holds.values()
                     if h.status is HoldStatus.ACTIVE]
        deadlines += [o.pay_by for o in self.model.orders.values()
                      if o.status is OrderStatus.PENDING]
        assert self.led.next_deadline_ms() == (min(deadlines) if deadlines else None)


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ledger_against_the_model = LedgerMachine.TestCase

