"""The chaos checker catches each kind of broken promise, and passes a clean sale.

Every history here is made from a real ledger run (so the feed has the exact shape the
nodes serve) and then, for the bad cases, one bug is planted in it: an oversell, a lost
acknowledged hold, a duplicate order for one key, a first-come-first-served violation, a
per-user limit breach, a hold that outlives its deadline, a divergent node, a phantom
write; and in the order-snapshot store a missing order or hold, a wrong status, a
duplicate order, wrong stock, a journal that does not add up and a store left behind.
The stock levels of planted events are restamped from their moves, so each plant
breaks one promise and the test can insist on that kind of violation.
"""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

from chaos.checker import (
    CONSERVATION,
    CONTRADICTION,
    DIVERGENCE,
    DUPLICATE,
    EXPIRY,
    FCFS,
    LIMIT,
    LOST_ACK,
    OVERSELL,
    PHANTOM,
    STORE,
    Verdict,
    check,
)
from chaos.history import History
from chaos.observer import read_store
from ledger import Ledger, Settings
from ledger.codec import encode_event, encode_view
from snapshots.store import FeedPage, SnapshotStore

T0 = 1_700_000_000_000
TTL_MS = 3_000
SOLD_OUT = "https://flashsale.dev/problems/sold-out"


class Sale:
    """A real ledger, its feed and a client history, built side by side."""

    def __init__(self) -> None:
        self.ledger = Ledger(Settings(payment_ttl_ms=10_000))
        self.feed: list[dict[str, Any]] = []
        self.history = History()

    def apply(self, at_ms: int, command: dict[str, Any]) -> dict[str, Any]:
        applied = self.ledger.apply_encoded(at_ms, [command])
        self.feed.extend(encode_event(e) for e in applied.events)
        from ledger.codec import encode_result

        return {"index": applied.index, **encode_result(applied.results[0])}

    def client(
        self,
        at_ms: int,
        process: str,
        op: str,
        command: dict[str, Any],
        request: dict[str, Any],
    ) -> dict[str, Any]:
        """One client operation through the ledger, recorded ok/fail like the workload."""
        op_id = self.history.invoke(process, op, request, ledger_key=command["key"])
        result = self.apply(at_ms, command)
        if result["ok"]:
            self.history.complete(op_id, "ok", process, op, result=result, status=200)
        else:
            body = {"type": f"https://flashsale.dev/problems/{result['reason'].replace('_', '-')}"}
            self.history.complete(op_id, "fail", process, op, result=body, status=409)
        return result

    def final(self) -> dict[str, Any]:
        products = [encode_view(p) for p in self.ledger.products()]
        node = {"ledger_index": self.ledger.index, "digest": self.ledger.digest(),
                "products": products}
        return {
            "events": self.feed,
            "nodes": {"n1": node, "n2": copy.deepcopy(node), "n3": copy.deepcopy(node)},
            "holds": {},
            "orders": {},
        }


def reserve(sale: Sale, at_ms: int, key: str, user: str, quantity: int) -> dict[str, Any]:
    command = {"type": "reserve", "key": key, "user_id": user, "product_id": "p1",
               "quantity": quantity}
    request = {"user_id": user, "product_id": "p1", "quantity": quantity}
    return sale.client(at_ms, user, "reserve", command, request)


def clean_sale() -> Sale:
    """Stock 4, 2 per shopper, holds of 3 s: holds, a sell-out, a refusal, a checkout,
    a payment, an expiry and the stock coming back to a later shopper."""
    sale = Sale()
    sale.apply(T0, {"type": "create_product", "key": "create-p1", "product_id": "p1",
                    "name": "Lamp", "price_minor": 1999, "total_stock": 4,
                    "per_user_limit": 2, "hold_ttl_ms": TTL_MS})
    reserve(sale, T0 + 10, "u1:a", "u1", 2)
    reserve(sale, T0 + 20, "u2:a", "u2", 2)
    refused = reserve(sale, T0 + 30, "u3:a", "u3", 1)
    assert refused["reason"] == "sold_out"
    placed = sale.client(T0 + 40, "u1", "checkout",
                         {"type": "checkout", "key": "u1:b", "user_id": "u1", "cart_id": "c1"},
                         {"user_id": "u1", "cart_id": "c1"})
    pay = {"type": "record_payment", "key": "pay-1", "order_id": placed["order_id"],
           "outcome": "paid", "amount_minor": placed["amount_minor"]}
    sale.client(T0 + 50, "u1", "pay", pay, {"order_id": placed["order_id"], "outcome": "paid"})
    sale.apply(T0 + 20 + TTL_MS, {"type": "expire", "key": "tick-1"})  # u2's hold ends
    reserve(sale, T0 + 4_000, "u3:b", "u3", 1)
    return sale


def restamp(feed: list[dict[str, Any]]) -> None:
    """Recompute every event's stock levels from the moves before it (forged events
    then agree with the feed's arithmetic, so only the planted promise breaks)."""
    levels: dict[str, dict[str, int]] = {}
    for ev in feed:
        for m in ev["moves"]:
            lv = levels.setdefault(m["product_id"], {"total_stock": 0, "available": 0,
                                                     "reserved": 0, "sold": 0})
            if m["from_bucket"] == "outside":
                lv["total_stock"] += m["quantity"]
            else:
                lv[m["from_bucket"]] -= m["quantity"]
            if m["to_bucket"] == "outside":
                lv["total_stock"] -= m["quantity"]
            else:
                lv[m["to_bucket"]] += m["quantity"]
        ev["stock"] = [{"product_id": s["product_id"], **levels[s["product_id"]]}
                       for s in ev["stock"]]


def insert_after(feed: list[dict[str, Any]], i: int, event: dict[str, Any]) -> None:
    """Put ``event`` right after ``feed[i]`` in the same ledger entry."""
    index, seq = feed[i]["index"], feed[i]["seq"]
    for ev in feed[i + 1:]:
        if ev["index"] == index:
            ev["seq"] += 1
    feed.insert(i + 1, {**event, "index": index, "seq": seq + 1})
    restamp(feed)


def position(feed: list[dict[str, Any]], kind: str, key: str | None = None) -> int:
    return next(i for i, ev in enumerate(feed)
                if ev["kind"] == kind and (key is None or ev["key"] == key))


def kinds(verdict: Verdict) -> set[str]:
    return {v.kind for v in verdict.violations}


def test_a_clean_sale_passes_with_its_counts() -> None:
    sale = clean_sale()
    final = sale.final()
    final["expect_drained"] = False
    verdict = check(sale.history.records, final)
    assert verdict.ok, verdict.summary()
    c = verdict.counts
    assert (c["operations"], c["acknowledged"], c["failed"], c["unknown"]) == (6, 5, 1, 0)
    assert c["holds_placed"] == 3 and c["orders_placed"] == 1 and c["units_sold"] == 2
    assert c["sold_out_refusals"] == 1
    assert verdict.to_json()["valid"] is True
    assert verdict.summary().startswith("PASS")


def test_a_planted_oversell_is_caught() -> None:
    sale = clean_sale()
    feed = sale.feed
    i = position(feed, "hold_placed", "u2:a")
    forged = copy.deepcopy(feed[i])
    forged.update(key="u4:a", user_id="u4", hold_id="h90", cart_id="c90")
    forged["moves"][0]["quantity"] = 2  # 0 units left: this reserve takes 2 it cannot have
    insert_after(feed, i + 1, forged)
    verdict = check(sale.history.records, sale.final())
    assert OVERSELL in kinds(verdict), verdict.summary()


def test_an_event_that_lies_about_stock_is_caught() -> None:
    sale = clean_sale()
    i = position(sale.feed, "hold_placed", "u1:a")
    sale.feed[i]["stock"][0]["available"] += 1
    verdict = check(sale.history.records, sale.final())
    assert CONSERVATION in kinds(verdict), verdict.summary()


def test_a_lost_acknowledged_hold_is_caught() -> None:
    sale = clean_sale()
    # The shopper was told "held" (h2), but the log after recovery never placed it:
    # remove its placement and its expiry, as a leader that lost it would have.
    lost = {i for i, ev in enumerate(sale.feed) if ev["hold_id"] == "h2"}
    sale.feed[:] = [ev for i, ev in enumerate(sale.feed) if i not in lost]
    restamp(sale.feed)
    final = sale.final()
    final["holds"] = {"h2": None}
    verdict = check(sale.history.records, final)
    assert LOST_ACK in kinds(verdict), verdict.summary()
    assert any("h2" in v.detail for v in verdict.violations if v.kind == LOST_ACK)


def test_a_lost_acknowledged_order_is_caught() -> None:
    sale = clean_sale()
    op_id = sale.history.invoke("u5", "checkout", {"user_id": "u5", "cart_id": "c7"},
                                ledger_key="u5:z")
    sale.history.complete(op_id, "ok", "u5", "checkout", result={"order_id": "o77"})
    verdict = check(sale.history.records, sale.final())
    assert LOST_ACK in kinds(verdict), verdict.summary()


def test_a_duplicate_order_for_one_key_is_caught() -> None:
    sale = clean_sale()
    i = position(sale.feed, "order_placed")
    again = copy.deepcopy(sale.feed[i])
    again["order_id"] = "o2"  # the same key placed a second order
    insert_after(sale.feed, i, again)
    verdict = check(sale.history.records, sale.final())
    assert DUPLICATE in kinds(verdict), verdict.summary()
    assert any("u1:b" in v.detail for v in verdict.violations if v.kind == DUPLICATE)


def test_a_retry_acknowledged_with_another_order_id_is_caught() -> None:
    sale = clean_sale()
    op_id = sale.history.invoke("u1", "checkout", {"user_id": "u1", "cart_id": "c1"},
                                ledger_key="u1:b")
    sale.history.complete(op_id, "ok", "u1", "checkout", result={"order_id": "o9"})
    verdict = check(sale.history.records, sale.final())
    assert DUPLICATE in kinds(verdict), verdict.summary()


def test_a_double_charge_is_caught() -> None:
    sale = clean_sale()
    i = position(sale.feed, "order_completed")
    insert_after(sale.feed, i, {**copy.deepcopy(sale.feed[i]), "moves": [], "key": "pay-2"})
    verdict = check(sale.history.records, sale.final())
    assert DUPLICATE in kinds(verdict), verdict.summary()


def test_a_sold_out_refusal_while_stock_was_available_is_caught() -> None:
    sale = clean_sale()
    # u3's second reserve found the expired units; plant a refusal right before it.
    i = position(sale.feed, "hold_placed", "u3:b")
    refusal = {**copy.deepcopy(sale.feed[i]), "kind": "reserve_refused", "key": "u6:a",
               "user_id": "u6", "hold_id": "", "cart_id": "", "moves": [], "stock": [],
               "data": {"reason": "sold_out", "quantity": 1, "available": 0}}
    insert_after(sale.feed, i - 1, refusal)
    verdict = check(sale.history.records, sale.final())
    assert FCFS in kinds(verdict), verdict.summary()


def test_a_sold_out_answer_without_a_place_in_the_log_is_caught() -> None:
    sale = clean_sale()
    op_id = sale.history.invoke("u7", "reserve", {"user_id": "u7", "product_id": "p1",
                                                  "quantity": 1}, ledger_key="u7:a")
    sale.history.complete(op_id, "fail", "u7", "reserve", result={"type": SOLD_OUT}, status=409)
    verdict = check(sale.history.records, sale.final())
    assert FCFS in kinds(verdict), verdict.summary()


def test_an_edge_cache_refusal_is_judged_at_the_index_the_cache_had() -> None:
    sale = clean_sale()
    sold_out_at = sale.feed[position(sale.feed, "sold_out")]["index"]
    start = sale.feed[0]["index"]
    for user, index in (("u8", sold_out_at), ("u9", start)):
        op_id = sale.history.invoke(user, "reserve", {"user_id": user, "product_id": "p1",
                                                      "quantity": 1}, ledger_key=f"{user}:a")
        result = {"type": SOLD_OUT, "source": "edge-cache", "ledger_index": index}
        sale.history.complete(op_id, "fail", user, "reserve", result=result, status=409)
    verdict = check(sale.history.records, sale.final())
    fcfs = [v for v in verdict.violations if v.kind == FCFS]
    assert [v.refs["key"] for v in fcfs] == ["u9:a"], verdict.summary()


def test_a_per_user_limit_breach_is_caught() -> None:
    sale = clean_sale()
    i = position(sale.feed, "hold_placed", "u3:b")
    third = copy.deepcopy(sale.feed[i])
    third.update(key="u1:c", user_id="u1", hold_id="h91", cart_id="c91")  # u1 bought 2
    insert_after(sale.feed, i, third)
    verdict = check(sale.history.records, sale.final())
    assert LIMIT in kinds(verdict), verdict.summary()


def test_a_hold_that_outlives_its_deadline_is_caught() -> None:
    sale = clean_sale()
    i = position(sale.feed, "hold_placed", "u2:a")
    sale.feed[i]["data"]["expires_at_ms"] = T0 + 25  # the sell-out refusal at +30 is later
    verdict = check(sale.history.records, sale.final())
    assert EXPIRY in kinds(verdict), verdict.summary()
    assert check(sale.history.records, sale.final(), expiry_tolerance_ms=60_000).ok


def test_units_still_reserved_after_every_deadline_are_caught() -> None:
    sale = clean_sale()
    reserve(sale, T0 + 4_100, "u4:z", "u4", 1)
    final = sale.final()
    assert check(sale.history.records, final).ok
    final["expect_drained"] = True
    verdict = check(sale.history.records, final)
    assert EXPIRY in kinds(verdict), verdict.summary()


def test_nodes_that_disagree_or_vanish_are_caught() -> None:
    sale = clean_sale()
    final = sale.final()
    final["nodes"]["n2"]["digest"] = "0" * 64
    assert DIVERGENCE in kinds(check(sale.history.records, final))
    final = sale.final()
    final["nodes"]["n3"] = None
    assert DIVERGENCE in kinds(check(sale.history.records, final))


def test_a_final_state_that_differs_from_the_feed_is_caught() -> None:
    sale = clean_sale()
    final = sale.final()
    final["nodes"]["n1"]["products"][0]["sold"] += 1
    final["nodes"]["n1"]["products"][0]["available"] -= 1
    verdict = check(sale.history.records, final)
    assert CONSERVATION in kinds(verdict), verdict.summary()


def test_a_write_refused_before_proposal_must_leave_no_trace() -> None:
    sale = clean_sale()
    # The shopper was told 503 no-leader (never applied), yet the key is in the log.
    op_id = sale.history.invoke("u3", "reserve", {"user_id": "u3", "product_id": "p1",
                                                  "quantity": 1}, ledger_key="u3:b")
    no_leader = {"type": "https://flashsale.dev/problems/no-leader"}
    sale.history.complete(op_id, "fail", "u3", "reserve", result=no_leader, status=503)
    verdict = check(sale.history.records, sale.final())
    assert PHANTOM in kinds(verdict), verdict.summary()
    # The same answer after an ambiguous attempt proves nothing: no violation.
    sale = clean_sale()
    op_id = sale.history.invoke("u3", "reserve", {}, ledger_key="u3:b")
    sale.history.complete(op_id, "fail", "u3", "reserve", result=no_leader, status=503,
                          ambiguous=True)
    assert check(sale.history.records, sale.final()).ok


def test_a_refusal_for_a_key_that_took_effect_is_caught() -> None:
    sale = clean_sale()
    # A retry of u1's first reserve was refused by a gateway's cache as sold out, but
    # the first attempt had placed the hold: the shopper was told the opposite of the log.
    op_id = sale.history.invoke("u1", "reserve", {"user_id": "u1", "product_id": "p1",
                                                  "quantity": 2}, ledger_key="u1:a")
    result = {"type": SOLD_OUT, "source": "edge-cache", "ledger_index": 3}
    sale.history.complete(op_id, "fail", "u1", "reserve", result=result, status=409,
                          ambiguous=True)
    verdict = check(sale.history.records, sale.final())
    assert CONTRADICTION in kinds(verdict), verdict.summary()


def test_a_404_for_a_hold_the_shopper_owns_is_counted_as_a_stale_read() -> None:
    sale = clean_sale()
    for user, hold in (("u2", "h2"), ("u5", "h2"), ("u2", "h404")):
        op_id = sale.history.invoke(user, "release", {"user_id": user, "cart_id": "c2",
                                                      "hold_id": hold}, ledger_key=f"{user}:r")
        result = {"type": "https://flashsale.dev/problems/unknown-hold"}
        sale.history.complete(op_id, "fail", user, "release", result=result, status=404)
    verdict = check(sale.history.records, sale.final())
    assert verdict.ok, verdict.summary()  # a wrong answer, not a broken invariant
    assert verdict.counts["stale_reads"] == 1  # only u2 owns h2
    assert any("stale read" in n for n in verdict.notes)


def test_unknown_outcomes_are_accepted_either_way() -> None:
    sale = clean_sale()
    for n, lk in enumerate(("u1:a", "u8:never")):
        op_id = sale.history.invoke(f"u{n}", "reserve", {}, ledger_key=lk)
        sale.history.complete(op_id, "unknown", f"u{n}", "reserve", ambiguous=True)
    verdict = check(sale.history.records, sale.final())
    assert verdict.ok, verdict.summary()
    assert verdict.counts["unknown"] == 2


def test_faults_are_counted() -> None:
    sale = clean_sale()
    sale.history.fault("begin", "kill", target="n1")
    sale.history.fault("end", "kill", target="n1")
    assert check(sale.history.records, sale.final()).counts["faults"] == 1


# -- the order-snapshot store ------------------------------------------------------------


def store_of(sale: Sale, tmp_path: Path, up_to: int | None = None) -> str:
    """A real snapshot store (SQLite) that applied the sale's feed; its URL."""
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    store = SnapshotStore.open(url)
    try:
        last = sale.ledger.index if up_to is None else up_to
        events = [e for e in sale.feed if e["index"] <= last]
        store.apply_page(FeedPage(events=events, last_index=last), 0)
    finally:
        store.close()
    return url


def judged_with_store(sale: Sale, url: str) -> Verdict:
    final = dict(sale.final(), feed_last_index=sale.ledger.index, store=read_store(url))
    return check(sale.history.records, final)


def plant(url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        assert db.execute(sql, params).rowcount >= 1


def the_order(sale: Sale) -> str:
    return str(sale.feed[position(sale.feed, "order_placed")]["order_id"])


def test_a_store_that_follows_the_log_passes(tmp_path: Path) -> None:
    sale = clean_sale()
    verdict = judged_with_store(sale, store_of(sale, tmp_path))
    assert verdict.ok, verdict.summary()
    assert verdict.counts["store_orders"] == 1
    assert verdict.counts["store_index"] == sale.ledger.index


def test_a_missing_acknowledged_order_in_the_store_is_caught(tmp_path: Path) -> None:
    sale = clean_sale()
    url = store_of(sale, tmp_path)
    plant(url, "DELETE FROM orders WHERE order_id = ?", (the_order(sale),))
    verdict = judged_with_store(sale, url)
    assert kinds(verdict) == {STORE}
    assert "acknowledged" in verdict.violations[0].detail


def test_an_order_with_the_wrong_status_in_the_store_is_caught(tmp_path: Path) -> None:
    sale = clean_sale()
    url = store_of(sale, tmp_path)
    plant(url, "UPDATE orders SET order_status = 'pending', payment_status = 'pending' "
          "WHERE order_id = ?", (the_order(sale),))
    verdict = judged_with_store(sale, url)
    assert kinds(verdict) == {STORE}
    assert "'completed', 'paid'" in verdict.violations[0].detail


def test_a_duplicate_order_row_in_the_store_is_caught(tmp_path: Path) -> None:
    sale = clean_sale()
    url = store_of(sale, tmp_path)
    # A second order for the same cart, as a writer that applied a checkout twice would.
    plant(url, "INSERT INTO orders SELECT 'o-dup', user_id, cart_id, order_status, "
          "payment_status, amount_minor, currency, payment_method, failure, created_at_ms, "
          "pay_by_ms, updated_at_ms, pii_sealed, pii_key_id, ledger_index FROM orders "
          "WHERE order_id = ?", (the_order(sale),))
    verdict = judged_with_store(sale, url)
    assert DUPLICATE in kinds(verdict)
    assert any("o-dup" in v.detail and v.kind == STORE for v in verdict.violations)


def test_the_same_order_row_twice_is_caught() -> None:
    sale = clean_sale()
    final = sale.final()
    oid = the_order(sale)
    row = {"order_id": oid, "cart_id": "c1", "user_id": "u1", "order_status": "completed",
           "payment_status": "paid"}
    final["store"] = {"applied_index": sale.ledger.index, "orders": [row, dict(row)]}
    verdict = check(sale.history.records, final)
    assert any(v.kind == DUPLICATE and f"order {oid} twice" in v.detail
               for v in verdict.violations)


def test_wrong_stock_in_the_store_is_caught(tmp_path: Path) -> None:
    sale = clean_sale()
    url = store_of(sale, tmp_path)
    plant(url, "UPDATE inventory SET available_quantity = available_quantity - 1, "
          "sold_quantity = sold_quantity + 1 WHERE product_id = 'p1'")
    verdict = judged_with_store(sale, url)
    assert kinds(verdict) == {STORE}
    assert [v.detail.split(" ")[0] for v in verdict.violations] == ["inventory"]


def test_a_journal_that_does_not_add_up_is_caught(tmp_path: Path) -> None:
    sale = clean_sale()
    url = store_of(sale, tmp_path)
    plant(url, "DELETE FROM stock_moves WHERE rowid = (SELECT MAX(rowid) FROM stock_moves)")
    verdict = judged_with_store(sale, url)
    assert kinds(verdict) == {STORE}
    assert "stock_moves journal" in verdict.violations[0].detail


def test_a_missing_hold_in_the_store_is_caught(tmp_path: Path) -> None:
    sale = clean_sale()
    url = store_of(sale, tmp_path)
    hold = sale.feed[position(sale.feed, "hold_placed", "u3:b")]["hold_id"]
    plant(url, "DELETE FROM cart WHERE hold_id = ?", (hold,))
    verdict = judged_with_store(sale, url)
    assert kinds(verdict) == {STORE}
    assert f"hold {hold}" in verdict.violations[0].detail


def test_a_store_left_behind_the_ledger_is_caught(tmp_path: Path) -> None:
    sale = clean_sale()
    url = store_of(sale, tmp_path, up_to=sale.ledger.index - 1)
    verdict = judged_with_store(sale, url)
    assert kinds(verdict) == {STORE}
    assert "stopped at ledger index" in verdict.violations[0].detail
