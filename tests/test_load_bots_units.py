"""The pure parts of make load-bots: who got the units (from feed events), the answers'
classes, the shoppers' source addresses, the shop page's poll interval."""

from __future__ import annotations

import ipaddress

# Not from loadtests.locust_bots: importing locust monkey-patches the process (gevent).
from loadtests.browser import MAX_POLL_S, MIN_POLL_S, poll_after_s, shopper_address
from loadtests.run_bots import Units, answer_of, attribute, bot_decisions, column, user_class


def _move(src: str, dst: str, q: int = 1, product: str = "sale") -> dict[str, object]:
    return {"product_id": product, "from_bucket": src, "to_bucket": dst, "quantity": q}


def test_units_are_attributed_by_the_shopper_id_of_each_move() -> None:
    def event(kind: str, user: str, *moves: dict[str, object]) -> dict[str, object]:
        return {"kind": kind, "user_id": user, "moves": list(moves)}

    events = [
        event("product_created", "", _move("available", "available")),
        event("hold_placed", "shopper-abc", _move("available", "reserved")),
        event("order_completed", "shopper-abc", _move("reserved", "sold")),
        event("hold_placed", "bot-farm-1-1", _move("available", "reserved")),
        event("hold_expired", "bot-farm-1-1", _move("reserved", "available")),
        event("hold_placed", "shopper-xyz", _move("available", "reserved", 2)),
        event("hold_placed", "shopper-xyz", _move("available", "reserved", 5, product="x")),
    ]
    assert attribute(events, "sale") == {
        "shopper": Units(held=3, reserved=2, sold=1),
        "bot-farm": Units(held=1, reserved=0, sold=0),
    }


def test_classes_and_answer_columns() -> None:
    assert user_class("shopper-abc") == "shopper"
    assert user_class("bot-swarm-3-1") == "bot-swarm"
    assert user_class("bot-replay-1-7") == "bot-replay"
    assert user_class("guestabc") == "other"
    assert answer_of("bot-script POST /add-to-cart -> 403 admission-required") == (
        "bot-script", "POST /add-to-cart", "403 admission-required"
    )  # fmt: skip
    assert answer_of("shopper GET /queue/{ticket} -> 200") == (
        "shopper",
        "GET /queue/{ticket}",
        "200",
    )
    assert column("201") == "2xx"
    assert column("409 sold-out") == "sale answer"
    assert column("429 rate-limited") == "429 rate-limited"
    assert column("403 challenge-replayed") == "403 challenge-replayed"
    assert column("403 admission-not-yours") == "403 admission-not-yours"
    assert column("500") == "other"


def test_bot_decisions_are_read_from_the_gateway_metrics() -> None:
    text = (
        "# HELP flashsale_gateway_bot_decisions_total Bot decisions\n"
        "# TYPE flashsale_gateway_bot_decisions_total counter\n"
        'flashsale_gateway_bot_decisions_total{decision="limited",reason="ip-rate"} 7.0\n'
        'flashsale_gateway_bot_decisions_total{decision="allowed",reason="passed"} 3.0\n'
        'flashsale_gateway_bot_decisions_created{decision="allowed",reason="passed"} 1.7e9\n'
    )
    assert bot_decisions(text) == {("limited", "ip-rate"): 7, ("allowed", "passed"): 3}


def test_every_shopper_of_a_long_run_has_its_own_loopback_address() -> None:
    addresses = [shopper_address(n) for n in range(62_500)]
    assert len(set(addresses)) == len(addresses)
    for a in addresses:
        ip = ipaddress.ip_address(a)
        assert ip.is_loopback and not a.startswith("127.0.0.") and not a.startswith("127.66.")


def test_the_page_polls_at_half_the_estimate_within_bounds() -> None:
    assert poll_after_s({"estimated_wait_s": 0}) == MIN_POLL_S
    assert poll_after_s({"estimated_wait_s": 3.0}) == 1.5
    assert poll_after_s({"estimated_wait_s": 600.0}) == MAX_POLL_S
