"""Determinism (invariant 7), snapshots, invariant checks and apply's never-raise rule."""

from __future__ import annotations

import dataclasses
import heapq
import json
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ledger import (
    Checkout,
    Command,
    CreateProduct,
    EventKind,
    Expire,
    HoldPlaced,
    HoldStatus,
    InvariantViolation,
    Ledger,
    PaymentOutcome,
    Reason,
    RecordPayment,
    Rejected,
    Release,
    Reserve,
    Restock,
    Settings,
)
from ledger.codec import encode_command
from ledger.frozen import fast_builder
from ledger.idempotency import IdempotencyMemory
from ledger.ledger import MAX_VIOLATIONS
from ledger.limits import MAX_COMMANDS_PER_ENTRY
from ledger.views import CartStatus

T0 = 1_700_000_000_000


def scripted_entries(seed: int, entries: int = 60) -> list[tuple[int, list[Command]]]:
    """A seeded, busy log: reserves, releases, checkouts, payments, restocks, time jumps."""
    rng = random.Random(seed)
    log: list[tuple[int, list[Command]]] = [
        (T0, [CreateProduct(key=f"create-{p}", product_id=p, name=p, price_minor=100 + i,
                            total_stock=4, per_user_limit=3, hold_ttl_ms=5_000)
              for i, p in enumerate(["a", "b", "c"])])
    ]
    at = T0
    n = 0
    for _ in range(entries):
        at += rng.choice([0, 10, 500, 3_000, 7_000])
        batch: list[Command] = []
        for _ in range(rng.randint(1, 6)):
            n += 1
            user = f"u{rng.randint(1, 5)}"
            roll = rng.random()
            if roll < 0.5:
                batch.append(Reserve(key=f"k{n}", user_id=user, product_id=rng.choice("abc"),
                                     quantity=rng.randint(1, 2)))
            elif roll < 0.6:
                batch.append(Release(key=f"k{n}", user_id=user, hold_id=f"h{rng.randint(1, n)}"))
            elif roll < 0.75:
                batch.append(Checkout(key=f"k{n}", user_id=user, cart_id=f"c{rng.randint(1, 9)}"))
            elif roll < 0.9:
                batch.append(RecordPayment(key=f"k{n}", order_id=f"o{rng.randint(1, 5)}",
                                           outcome=rng.choice(list(PaymentOutcome)),
                                           amount_minor=rng.choice([100, 101, 102, 200])))
            elif roll < 0.95:
                batch.append(Restock(key=f"k{n}", product_id=rng.choice("abc"),
                                     quantity=rng.choice([-1, 1, 2])))
            else:
                batch.append(Expire(key=f"k{n}"))
            if rng.random() < 0.1:  # a retry with the same key
                batch.append(batch[-1])
        log.append((at, batch))
    return log


def replay(log: list[tuple[int, list[Command]]], settings: Settings | None = None) -> Ledger:
    led = Ledger(settings or Settings(retention_ms=20_000, payment_ttl_ms=8_000))
    for at, batch in log:
        led.apply(at, batch)
    return led


@pytest.mark.parametrize("seed", range(5))
def test_the_same_entries_give_the_same_digest_and_state(seed: int) -> None:
    log = scripted_entries(seed)
    a, b = replay(log), replay(log)
    assert a.digest() == b.digest()
    assert a.snapshot_view() == b.snapshot_view()
    a.check_invariants()
    assert a.violations == []


def test_different_entries_give_different_digests() -> None:
    assert replay(scripted_entries(1)).digest() != replay(scripted_entries(2)).digest()
    led = replay(scripted_entries(1))
    before = led.digest()
    led.apply(led.now_ms, [])
    assert led.digest() != before  # the index is state


def test_apply_encoded_and_apply_reach_the_same_state_and_results() -> None:
    log = scripted_entries(3)
    typed = Ledger(Settings(retention_ms=20_000, payment_ttl_ms=8_000))
    wire = Ledger(Settings(retention_ms=20_000, payment_ttl_ms=8_000))
    for at, batch in log:
        a = typed.apply(at, batch)
        b = wire.apply_encoded(at, [json.loads(json.dumps(encode_command(c))) for c in batch])
        assert a == b
    assert typed.digest() == wire.digest()


def test_a_pickle_round_trip_keeps_the_digest_and_the_future() -> None:
    log = scripted_entries(4)
    led = replay(log[:40])
    copy = pickle.loads(pickle.dumps(led, protocol=2))  # pysyncobj's protocol
    assert copy.digest() == led.digest()
    for at, batch in log[40:]:
        assert copy.apply(at, batch) == led.apply(at, batch)
    assert copy.digest() == led.digest() == replay(log).digest()


def test_the_digest_does_not_depend_on_dict_order_or_heap_layout() -> None:
    led = replay(scripted_entries(5))
    before = led.digest()
    shuffled = pickle.loads(pickle.dumps(led))
    rng = random.Random(0)
    for name in ("_products", "_holds", "_carts", "_orders", "_open_carts", "_held", "_bought"):
        items = list(getattr(shuffled, name).items())
        rng.shuffle(items)
        setattr(shuffled, name, dict(items))
    heap = shuffled._deadlines._heap
    rng.shuffle(heap)
    heapq.heapify(heap)
    shuffled._digest_cache = None
    assert shuffled.digest() == before
    assert shuffled.next_deadline_ms() == led.next_deadline_ms()


def test_snapshot_view_is_json_and_lists_live_records() -> None:
    led = replay(scripted_entries(6))
    raw = led.snapshot_view()
    view: Any = json.loads(json.dumps(raw))
    assert view == raw
    assert view["index"] == led.index and view["at_ms"] == led.now_ms
    assert set(view) == {"index", "at_ms", "products", "holds", "carts", "orders", "settings"}
    assert [p["product_id"] for p in view["products"]] == ["a", "b", "c"]
    assert view["holds"] and all(h["status"] == HoldStatus.ACTIVE.value for h in view["holds"])
    for h in view["holds"]:
        assert led.hold(h["hold_id"]) is not None
    assert all(c["status"] == CartStatus.OPEN.value for c in view["carts"])
    assert all(led.order(o["order_id"]) is not None for o in view["orders"])
    assert view["settings"] == {"payment_ttl_ms": 8_000, "retention_ms": 20_000,
                                "max_idempotency_keys": 2_000_000}


def test_stock_level_is_the_current_balance_of_a_product() -> None:
    led = Ledger()
    led.apply(T0, [CreateProduct(key="c", product_id="p", name="p", price_minor=1,
                                 total_stock=3),
                   Reserve(key="r", user_id="u", product_id="p", quantity=2)])
    level = led.stock_level("p")
    assert level is not None and (level.available, level.reserved, level.total_stock) == (1, 2, 3)
    assert led.stock_level("nope") is None


def test_event_index_is_the_entry_index_and_seq_counts_within_it() -> None:
    led = Ledger()
    led.apply(T0, [CreateProduct(key="c", product_id="p", name="p", price_minor=1,
                                 total_stock=1)])
    applied = led.apply(T0, [Reserve(key=f"r{i}", user_id=f"u{i}", product_id="p", quantity=1)
                             for i in range(3)])
    assert applied.index == led.index == 2
    assert [(e.index, e.seq) for e in applied.events] == [(2, i) for i in range(4)]


# ---- never raise ---------------------------------------------------------------------------


def test_apply_encoded_never_raises_on_garbage() -> None:
    led = Ledger()
    garbage: list[Any] = [None, 7, "reserve", [], {}, {"type": "nope", "key": "k"},
                          {"type": "expire", "key": "k", "extra": 1}, {"type": 3}]
    applied = led.apply_encoded(T0, garbage)
    assert len(applied.results) == len(garbage)
    assert all(isinstance(r, Rejected) and r.reason is Reason.INVALID for r in applied.results)
    assert led.idempotency_keys() == 0
    assert led.apply_encoded(T0, "not a list").results == ()
    assert led.apply_encoded("soon", [{"type": "expire", "key": "e"}]).index == 3  # type: ignore[arg-type]
    assert led.now_ms == T0
    led.check_invariants()


def test_apply_never_raises_on_objects_that_are_not_commands() -> None:
    led = Ledger()
    applied = led.apply(T0, [object(), "x"])  # type: ignore[list-item]
    assert [r.reason for r in applied.results] == [Reason.INVALID, Reason.INVALID]  # type: ignore[union-attr]
    assert "not a ledger command" in applied.results[0].message  # type: ignore[union-attr]


def test_apply_with_something_that_is_not_a_batch_applies_an_empty_entry() -> None:
    led = Ledger()
    applied = led.apply(T0, None)  # type: ignore[arg-type]
    assert (applied.index, applied.results, applied.events) == (1, (), ())


def test_a_batch_beyond_the_limit_refuses_the_extra_commands() -> None:
    led = Ledger()
    wire = [{"type": "expire", "key": f"e{i}"} for i in range(MAX_COMMANDS_PER_ENTRY + 2)]
    results = led.apply_encoded(T0, wire).results
    assert len(results) == MAX_COMMANDS_PER_ENTRY + 2
    assert not isinstance(results[MAX_COMMANDS_PER_ENTRY - 1], Rejected)
    for extra in results[MAX_COMMANDS_PER_ENTRY:]:
        assert isinstance(extra, Rejected) and str(MAX_COMMANDS_PER_ENTRY) in extra.message
    typed = led.apply(T0, [Expire(key=f"t{i}") for i in range(MAX_COMMANDS_PER_ENTRY + 1)])
    assert isinstance(typed.results[-1], Rejected)


def test_a_handler_bug_becomes_an_invalid_result_and_a_violation_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    led = Ledger()
    led.apply(T0, [CreateProduct(key="c", product_id="p", name="p", price_minor=1,
                                 total_stock=5)])

    def broken(self: Ledger, command: Any) -> Any:
        self._emit(EventKind.SOLD_OUT, command.key)  # an event the failure must take back
        raise KeyError("boom")

    from ledger import ledger as ledger_module

    monkeypatch.setitem(ledger_module._HANDLERS, Reserve, broken)
    applied = led.apply(T0, [Reserve(key="r", user_id="u", product_id="p", quantity=1),
                             Expire(key="e")])
    failed = applied.results[0]
    assert isinstance(failed, Rejected) and failed.reason is Reason.INVALID
    assert failed.message == "internal error: KeyError: 'boom'"
    assert applied.events == ()
    assert not isinstance(applied.results[1], Rejected)
    assert led.violations == ["entry 2: internal error: KeyError: 'boom'"]
    assert led.idempotency_keys() == 2  # the failed command is not remembered


def test_a_broken_product_is_reported_after_the_batch_and_violations_stay_bounded() -> None:
    led = Ledger()
    led.apply(T0, [CreateProduct(key="c", product_id="p", name="p", price_minor=1,
                                 total_stock=500)])
    led._products["p"].available += 1  # a unit out of nowhere
    for i in range(MAX_VIOLATIONS + 5):
        led.apply(T0, [Reserve(key=f"r{i}", user_id=f"u{i}", product_id="p", quantity=1)])
    assert len(led.violations) == MAX_VIOLATIONS
    assert "available" in led.violations[-1] and "!= total_stock" in led.violations[-1]
    with pytest.raises(InvariantViolation):
        led.check_invariants()


def test_a_codec_bug_becomes_an_invalid_result_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ledger import ledger as ledger_module

    def broken(raw: object) -> Command:
        raise RecursionError("deep")

    monkeypatch.setattr(ledger_module, "decode_command", broken)
    led = Ledger()
    applied = led.apply_encoded(T0, [{"type": "expire", "key": "e"}])
    result = applied.results[0]
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID
    assert result.message == "internal error decoding: RecursionError: deep"
    assert led.violations == [f"entry 1: {result.message}"]


def test_an_exception_in_the_after_batch_check_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    led = Ledger()
    led.apply(T0, [CreateProduct(key="c", product_id="p", name="p", price_minor=1,
                                 total_stock=5)])

    def broken(d: Any) -> bool:
        raise RuntimeError("heap")

    monkeypatch.setattr(led, "_is_live", broken)
    led.apply(T0, [Reserve(key="r", user_id="u", product_id="p", quantity=1)])
    assert led.violations == ["entry 2: internal error after the batch: RuntimeError: heap"]


def test_after_batch_checks_report_time_going_back_and_a_memory_over_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    led = Ledger(Settings(max_idempotency_keys=1))
    led.apply(T0, [Expire(key="e0")])

    def back_in_time(at_ms: int) -> None:
        led._now = 0

    monkeypatch.setattr(led, "_advance_to", back_in_time)
    monkeypatch.setattr(IdempotencyMemory, "trim_to", lambda self, max_keys: 0)
    led.apply(T0 + 1, [Expire(key="e1")])
    assert led.violations == [
        "entry 2: idempotency memory holds 2 keys",
        f"entry 2: ledger time went back from {T0} to 0",
    ]


def test_a_per_user_counter_going_negative_is_reported() -> None:
    led = Ledger()
    led.apply(T0, [CreateProduct(key="c", product_id="p", name="p", price_minor=1,
                                 total_stock=5),
                   Reserve(key="r", user_id="u", product_id="p", quantity=2)])
    led._held[("u", "p")] = 1
    led.apply(T0, [Release(key="rel", user_id="u", hold_id="h1")])
    assert led.violations == ["entry 2: user u would hold -1 units of p"]


# ---- invariant checks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    name: str
    damage: Callable[[Ledger], object]
    message: str


def _busy() -> Ledger:
    """Every kind of record: active holds, a pending order, a completed order, carts."""
    led = Ledger()
    led.apply(T0, [CreateProduct(key="c", product_id="p", name="p", price_minor=10,
                                 total_stock=9)])
    led.apply(T0, [Reserve(key="r1", user_id="u1", product_id="p", quantity=2),
                   Checkout(key="co1", user_id="u1", cart_id="c1"),
                   RecordPayment(key="pay", order_id="o1", outcome=PaymentOutcome.PAID,
                                 amount_minor=20),
                   Reserve(key="r2", user_id="u2", product_id="p", quantity=1),
                   Checkout(key="co2", user_id="u2", cart_id="c2"),
                   Reserve(key="r3", user_id="u3", product_id="p", quantity=1),
                   Reserve(key="r4", user_id="u3", product_id="p", quantity=1),
                   Release(key="rel", user_id="u3", hold_id="h4")])
    led.check_invariants()
    return led


def _setattr(path: str, value: Any) -> Callable[[Ledger], None]:
    def damage(led: Ledger) -> None:
        *parents, last = path.split(".")
        target: Any = led
        for part in parents:
            target = target[part] if isinstance(target, dict) else getattr(target, part)
        if isinstance(target, dict):
            target[last] = value
        else:
            setattr(target, last, value)

    return damage


CORRUPTIONS = [
    Corruption("conservation", _setattr("_products.p.sold", 1), "!= total_stock"),
    Corruption("negative", _setattr("_products.p.total_stock", -1), "negative"),
    Corruption("split", _setattr("_products.p.held_units", 5), "units in active holds"),
    Corruption("future update", _setattr("_products.p.updated_at_ms", T0 + 1), "future"),
    Corruption("hold product", _setattr("_holds.h3.product_id", "zz"), "unknown product"),
    Corruption("hold future", _setattr("_holds.h3.created_at_ms", T0 + 1), "future"),
    Corruption("hold past expiry", _setattr("_holds.h3.expires_at_ms", T0), "past its expiry"),
    Corruption("hold not in cart", lambda led: led._carts["c3"].active.clear(),
               "not among its cart"),
    Corruption("cart too full",
               lambda led: led._carts["c3"].active.update(dict.fromkeys(map(str, range(101)))),
               "102 active holds"),
    Corruption("cart lists a dead hold", _setattr("_holds.h3.status", HoldStatus.EXPIRED),
               "h3 listed as active but is not"),
    Corruption("active hold missing from cart holds",
               lambda led: led._carts["c3"].hold_ids.pop("h3"), "missing from its holds"),
    Corruption("open cart pointer", lambda led: led._open_carts.pop("u3"), "open but not"),
    Corruption("ordered cart", _setattr("_carts.c1.order_id", None), "ordered without"),
    Corruption("stray pointer", _setattr("_open_carts.u9", "c1"), "not an open cart"),
    Corruption("amount", _setattr("_orders.o1.amount_minor", 1), "amount"),
    Corruption("pending past deadline", _setattr("_orders.o2.pay_by_ms", T0),
               "pending past its payment deadline"),
    Corruption("order future", _setattr("_orders.o1.ended_at_ms", T0 + 1), "future"),
    Corruption("order line product", lambda led: led._products.pop("p"), "unknown product"),
    Corruption("order line hold", _setattr("_holds.h1.status", HoldStatus.RELEASED),
               "not an ordered hold"),
    Corruption("held", _setattr("_held", {}), "per-user held units"),
    Corruption("bought zero", _setattr("_bought", {("u1", "p"): 0}), "bought 0"),
    Corruption("pending units", _setattr("_products.p.pending_units", 0), "pending_units"),
    Corruption("hold deadline", lambda led: led._deadlines._heap.clear(), "not scheduled"),
    Corruption("key cap", _setattr("_settings", Settings(max_idempotency_keys=1)),
               "more than 1"),
    Corruption("old key", _setattr("_now", T0 + 3_600_000),
               "older than the retention time"),
    Corruption("memory order", lambda led: led._memory._order.pop(), "keys in order"),
]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.name)
def test_check_invariants_finds_each_corruption(corruption: Corruption) -> None:
    led = _busy()
    corruption.damage(led)
    with pytest.raises(InvariantViolation) as raised:
        led.check_invariants()
    assert any(corruption.message in p for p in raised.value.problems), raised.value.problems


def test_loading_a_corrupt_snapshot_raises_invariant_violation() -> None:
    led = _busy()
    led._products["p"].available += 1
    blob = pickle.dumps(led, protocol=2)
    with pytest.raises(InvariantViolation, match="total_stock"):
        pickle.loads(blob)


def test_invariant_violation_survives_pickling_and_summarises_many_problems() -> None:
    error = InvariantViolation([f"problem {i}" for i in range(12)])
    assert str(error).endswith("(and 2 more)")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems and str(copy) == str(error)


def test_check_invariants_passes_on_a_fresh_and_a_busy_ledger() -> None:
    Ledger().check_invariants()
    led = replay(scripted_entries(7, entries=120))
    led.check_invariants()


# ---- fast_builder ---------------------------------------------------------------------


def test_fast_builder_builds_records_equal_to_their_init() -> None:
    build = fast_builder(HoldPlaced)
    made = build("h1", "c1", "u1", "p1", 2, 5)
    assert made == HoldPlaced(hold_id="h1", cart_id="c1", user_id="u1", product_id="p1",
                              quantity=2, expires_at_ms=5)
    assert hash(made) == hash(pickle.loads(pickle.dumps(made)))
    keyword = fast_builder(Reserve)(key="k", user_id="u", product_id="p", quantity=1)
    assert keyword == Reserve(key="k", user_id="u", product_id="p", quantity=1)


def test_fast_builder_refuses_what_it_cannot_build_faithfully() -> None:
    @dataclass
    class Plain:
        x: int

    @dataclass(slots=True)
    class WithPostInit:
        x: int

        def __post_init__(self) -> None:
            self.x += 1

    @dataclass(slots=True)
    class WithFactory:
        x: list[int] = dataclasses.field(default_factory=list)

    for cls in (Plain, WithPostInit, WithFactory, Settings):
        with pytest.raises(TypeError):
            fast_builder(cls)
