"""The Bots and queue page's functional core: form values, the operators' record, and
gateway documents turned into rows, totals and the changes a gateway still lacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from admin import bots_store
from admin.bots_store import ListFull, Wanted
from admin.bots_values import (
    entry,
    kind_of,
    list_name,
    same_setting,
    setting,
    settings_from_form,
)
from admin.bots_view import (
    BotsReading,
    ListOp,
    current_settings,
    gateway_json,
    lists_json,
    plan,
    reasons,
    snapshot,
    totals,
)
from admin.product_forms import FormError
from admin.store import open_store


def doc(**over: Any) -> dict[str, Any]:
    """A GET /internal/bots document, as the contract in docs/BOTS.md shapes it."""
    base: dict[str, Any] = {
        "enabled": True,
        "defences": {"rate_limits": True, "challenge": True, "heuristics": True,
                     "waiting_room": False},
        "settings": {"challenge_difficulty": 50_000, "admission_rate": 50.0, "block_score": 100},
        "lists": {"block_ips": [], "allow_ips": [], "block_shoppers": [], "allow_shoppers": []},
        "counts": {"allowed": 10, "limited": 3, "challenged": 2, "blocked": 1, "queued": 0,
                   "by_reason": {"limited/ip-rate": 3, "challenged/challenge-missing": 2,
                                 "blocked/block-list": 1}},
        "queue": {"issued": 5, "admitted": 4, "waiting": 1, "opens_at": None,
                  "admission_rate": 50.0},
        "redis": {"configured": False, "ok": False},
    }  # fmt: skip
    base.update(over)
    return base


# -- form values ------------------------------------------------------------------------------


def test_settings_form_takes_the_filled_fields_within_the_gateway_bounds() -> None:
    assert settings_from_form({"challenge_difficulty": " 200000 ", "admission_rate": "",
                               "block_score": "80"}) == {"challenge_difficulty": 200_000,
                                                         "block_score": 80}  # fmt: skip
    assert settings_from_form({"admission_rate": "12.5"}) == {"admission_rate": 12.5}
    assert setting("challenge_difficulty", "1000") == 1000
    assert setting("challenge_difficulty", "10000000") == 10_000_000
    assert setting("admission_rate", "0.1") == 0.1
    assert setting("block_score", "1000") == 1000


@pytest.mark.parametrize(
    ("field", "text", "says"),
    [
        ("challenge_difficulty", "999", "999 is outside 1000..10000000"),
        ("challenge_difficulty", "10000001", "outside 1000..10000000"),
        ("challenge_difficulty", "1e6", "'1e6' is not a whole number"),
        ("admission_rate", "0.05", "outside 0.1..100000"),
        ("admission_rate", "nan", "outside 0.1..100000"),
        ("admission_rate", "fast", "'fast' is not a number"),
        ("block_score", "0", "0 is outside 1..1000"),
        ("block_score", "12.5", "not a whole number"),
    ],
)
def test_a_setting_out_of_bounds_is_refused_naming_the_field(
    field: str, text: str, says: str
) -> None:
    with pytest.raises(FormError) as err:
        settings_from_form({field: text})
    assert err.value.field == field
    assert says in str(err.value)


def test_an_empty_settings_form_says_to_fill_one_in() -> None:
    with pytest.raises(FormError, match="fill in at least one setting"):
        settings_from_form({"challenge_difficulty": " ", "block_score": ""})


def test_list_entries_are_checked_and_written_canonically() -> None:
    assert entry("block_ips", " 203.0.113.7 ") == "203.0.113.7"
    assert entry("block_ips", "10.1.2.3/8") == "10.0.0.0/8"  # host bits cleared
    assert entry("allow_ips", "198.51.100.9/32") == "198.51.100.9"  # one host: the address
    assert entry("block_ips", "2001:DB8::1") == "2001:db8::1"
    assert entry("block_shoppers", "bot-42@example") == "bot-42@example"
    assert list_name("allow_shoppers") == "allow_shoppers"


@pytest.mark.parametrize(
    ("list_", "text", "says"),
    [
        ("block_ips", "300.1.1.1", "not an IP address or network"),
        ("block_ips", "alice", "not an IP address or network"),
        ("block_ips", "", "expected 1..64 characters"),
        ("block_shoppers", "has space", "not a shopper id"),
        ("block_shoppers", "x" * 65, "expected 1..64 characters"),
        ("allow_shoppers", "a:b", "not a shopper id"),
    ],
)
def test_a_bad_entry_is_refused_with_what_is_expected(list_: str, text: str, says: str) -> None:
    with pytest.raises(FormError) as err:
        entry(list_, text)
    assert err.value.field == "value" and says in str(err.value)


def test_an_unknown_list_is_refused() -> None:
    with pytest.raises(FormError, match="expected one of block_ips"):
        list_name("block_everyone")


def test_the_cli_picks_the_list_from_the_value() -> None:
    assert kind_of("10.0.0.0/8") == "ips"
    assert kind_of("::1") == "ips"
    assert kind_of("alice") == "shoppers"


def test_settings_compare_floats_within_rounding() -> None:
    assert same_setting("admission_rate", 0.1 + 0.2, 0.3)
    assert not same_setting("admission_rate", 50.0, 51.0)
    assert same_setting("challenge_difficulty", 1000, 1000)
    assert not same_setting("challenge_difficulty", None, 1000)
    assert not same_setting("block_score", True, 1)


# -- the operators' record --------------------------------------------------------------------


def test_the_record_keeps_settings_entries_and_removals(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    bots_store.set_settings(conn, {"challenge_difficulty": 200_000}, at_ms=1, by="alice")
    bots_store.set_settings(conn, {"admission_rate": 2.5}, at_ms=2, by="alice")
    bots_store.add_entry(conn, "block_ips", "10.0.0.0/8", cap=5, at_ms=3, by="alice")
    bots_store.add_entry(conn, "block_ips", "10.0.0.0/8", cap=5, at_ms=4, by="alice")  # twice
    bots_store.add_entry(conn, "block_shoppers", "bot1", cap=5, at_ms=5, by="cli")
    bots_store.remove_entry(conn, "block_shoppers", "bot1", cap=5, at_ms=6, by="cli")
    conn.close()
    got = bots_store.wanted(open_store(tmp_path / "admin.db"))  # survives a restart
    assert got.settings == {"challenge_difficulty": 200_000, "admission_rate": 2.5}
    assert got.entries("block_ips") == {"10.0.0.0/8"}
    assert got.entries("block_shoppers") == frozenset()
    assert got.tombstones("block_shoppers") == {"bot1"}


def test_a_full_list_refuses_a_new_entry_but_not_one_it_holds(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    for i in range(3):
        bots_store.add_entry(conn, "block_ips", f"10.0.0.{i}", cap=3, at_ms=i, by="a")
    with pytest.raises(ListFull, match="holds 3 entries"):
        bots_store.add_entry(conn, "block_ips", "10.0.0.9", cap=3, at_ms=9, by="a")
    bots_store.add_entry(conn, "block_ips", "10.0.0.1", cap=3, at_ms=10, by="a")
    bots_store.add_entry(conn, "allow_ips", "10.0.0.9", cap=3, at_ms=11, by="a")  # other list
    bots_store.remove_entry(conn, "block_ips", "10.0.0.0", cap=3, at_ms=12, by="a")
    bots_store.add_entry(conn, "block_ips", "10.0.0.9", cap=3, at_ms=13, by="a")  # room again
    assert bots_store.wanted(conn).entries("block_ips") == {"10.0.0.1", "10.0.0.2", "10.0.0.9"}


def test_removals_beyond_the_cap_forget_the_oldest(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    for i in range(5):
        bots_store.remove_entry(conn, "block_shoppers", f"s{i}", cap=3, at_ms=i, by="a")
    assert bots_store.wanted(conn).tombstones("block_shoppers") == {"s2", "s3", "s4"}


# -- documents into the page ------------------------------------------------------------------


def test_a_gateway_row_shows_counts_defences_redis_and_settings() -> None:
    row = gateway_json(BotsReading("g1", "127.0.0.1:8080", doc()))
    assert row["up"] is True
    assert row["counts"] == {"allowed": 10, "limited": 3, "challenged": 2, "blocked": 1,
                             "queued": 0}  # fmt: skip
    assert row["defences_text"] == "rate limits, challenge, heuristics"
    assert row["redis_text"] == "not configured (local)"
    assert row["settings"]["challenge_difficulty"] == 50_000
    assert row["sync"] == "in sync"
    down = gateway_json(BotsReading("g2", "127.0.0.1:8081", None, "unreachable (ClientError)"))
    assert (down["up"], down["counts"], down["sync"]) == (False, None, "unknown (no answer)")
    off = gateway_json(BotsReading("g3", "x", doc(enabled=False)))
    assert (off["defences_text"], off["sync"]) == ("all off ([bots] enabled = false)",
                                                   "defences off")  # fmt: skip
    failing = doc(redis={"configured": True, "ok": False})
    assert gateway_json(BotsReading("g4", "x", failing))["redis_text"] == (
        "unreachable: local fallback"
    )


def test_totals_add_the_gateways_that_answered() -> None:
    readings = [
        BotsReading("g1", "a", doc()),
        BotsReading("g2", "b", doc(counts={"allowed": 5, "blocked": 7, "by_reason": {}})),
        BotsReading("g3", "c", None, "unreachable"),
    ]
    t = totals(readings)
    assert t["counts"] == {"allowed": 15, "limited": 3, "challenged": 2, "blocked": 8,
                           "queued": 0}  # fmt: skip
    assert (t["gateways_up"], t["gateways"]) == (2, 3)
    # Local queues: one per gateway, so they add up.
    assert t["queue_shared"] is False
    assert (t["queue"]["issued"], t["queue"]["waiting"], t["queue"]["admission_rate"]) == (
        10, 2, 100.0,
    )  # fmt: skip


def test_a_queue_shared_through_redis_is_counted_once() -> None:
    shared = {"configured": True, "ok": True}
    readings = [
        BotsReading("g1", "a", doc(redis=shared, queue={"issued": 9, "admitted": 6,
                                                        "waiting": 3, "admission_rate": 50.0})),
        BotsReading("g2", "b", doc(redis=shared, queue={"issued": 8, "admitted": 6,
                                                        "waiting": 2, "admission_rate": 50.0})),
    ]  # fmt: skip
    t = totals(readings)
    assert t["queue_shared"] is True
    assert t["queue"] == {"issued": 9, "admitted": 6, "waiting": 3, "admission_rate": 50.0}


def test_reasons_are_rows_per_decision_with_each_gateway() -> None:
    other = doc(counts={"limited": 4, "by_reason": {"limited/ip-rate": 1,
                                                    "limited/shopper-rate": 3}})  # fmt: skip
    rows = reasons([BotsReading("g1", "a", doc()), BotsReading("g2", "b", other)])
    assert [(r["key"], r["total"], r["by_gateway"]) for r in rows] == [
        ("limited/ip-rate", 4, {"g1": 3, "g2": 1}),
        ("limited/shopper-rate", 3, {"g2": 3}),
        ("challenged/challenge-missing", 2, {"g1": 2}),
        ("blocked/block-list", 1, {"g1": 1}),
    ]
    assert rows[0]["decision"] == "limited" and rows[0]["reason"] == "ip-rate"


def test_lists_show_where_each_entry_is_and_where_it_is_missing() -> None:
    wanted = Wanted(
        present={"block_ips": frozenset({"10.0.0.0/8", "203.0.113.7"})},
        removed={"block_ips": frozenset({"198.51.100.1"})},
    )
    g1 = doc(lists={"block_ips": ["10.0.0.0/8", "203.0.113.7", "198.51.100.1"]})
    g2 = doc(lists={"block_ips": ["10.9.9.9/8", "192.0.2.1"]})  # canonical: 10.0.0.0/8
    out = lists_json(wanted, [BotsReading("g1", "a", g1), BotsReading("g2", "b", g2)], 10)
    rows = {e["value"]: e for e in out["block_ips"]["entries"]}
    assert rows["10.0.0.0/8"] == {"value": "10.0.0.0/8", "state": "present",
                                  "on": ["g1", "g2"], "missing": []}  # fmt: skip
    assert rows["203.0.113.7"]["missing"] == ["g2"]
    assert rows["198.51.100.1"]["state"] == "removed"  # still on g1: being removed
    assert rows["192.0.2.1"]["state"] == "gateway only"
    assert out["block_ips"]["total"] == 4
    assert out["allow_shoppers"] == {"entries": [], "total": 0, "shown": 0}


def test_a_long_list_shows_its_first_entries_and_counts_them_all() -> None:
    wanted = Wanted(present={"block_shoppers": frozenset(f"bot{i:03d}" for i in range(250))})
    out = lists_json(wanted, [], 200)["block_shoppers"]
    assert (out["total"], out["shown"], len(out["entries"])) == (250, 200, 200)
    assert out["entries"][0]["value"] == "bot000"


def test_settings_shown_are_the_operators_then_a_gateways_then_the_configs() -> None:
    defaults = {"challenge_difficulty": 1, "admission_rate": 2.0, "block_score": 3}
    assert current_settings(Wanted(), [], defaults) == defaults
    readings = [BotsReading("g0", "z", None), BotsReading("g1", "a", doc())]
    assert current_settings(Wanted({"block_score": 7}), readings, defaults) == {
        "challenge_difficulty": 50_000, "admission_rate": 50.0, "block_score": 7,
    }  # fmt: skip


# -- what a gateway still lacks ---------------------------------------------------------------


def test_plan_is_empty_for_a_gateway_that_enforces_the_record() -> None:
    wanted = Wanted(
        {"challenge_difficulty": 50_000},
        {"block_ips": frozenset({"10.0.0.0/8"})},
        {"block_shoppers": frozenset({"gone"})},
    )
    assert plan(wanted, doc(lists={"block_ips": ["10.0.0.0/8"]}), 100).empty


def test_plan_for_a_restarted_gateway_sends_the_settings_and_entries_back() -> None:
    wanted = Wanted(
        {"challenge_difficulty": 200_000, "admission_rate": 50.0},
        {"block_ips": frozenset({"10.0.0.0/8", "203.0.113.7"}),
         "allow_shoppers": frozenset({"vip"})},
        {"block_shoppers": frozenset({"bot1", "bot2"})},
    )  # fmt: skip
    restarted = doc(lists={"block_ips": ["203.0.113.7"], "block_shoppers": ["bot2", "other"]})
    todo = plan(wanted, restarted, 100)
    assert todo.settings == {"challenge_difficulty": 200_000}  # admission rate is right
    assert todo.ops == (
        ListOp("block_ips", "add", "10.0.0.0/8"),
        ListOp("block_shoppers", "remove", "bot2"),  # "other" is not the console's: kept
        ListOp("allow_shoppers", "add", "vip"),
    )
    assert todo.size == 4 and not todo.empty


def test_plan_sends_at_most_max_ops_list_changes_per_poll() -> None:
    wanted = Wanted(present={"block_shoppers": frozenset(f"b{i:04d}" for i in range(500))})
    todo = plan(wanted, doc(), 200)
    assert len(todo.ops) == 200 and todo.more == 300 and todo.size == 500


def test_plan_leaves_a_gateway_with_its_defences_off_alone() -> None:
    wanted = Wanted({"block_score": 5}, {"block_ips": frozenset({"10.0.0.1"})})
    assert plan(wanted, doc(enabled=False), 100).empty


def test_the_snapshot_has_every_part_of_the_page() -> None:
    defaults = {"challenge_difficulty": 1, "admission_rate": 2.0, "block_score": 3}
    snap = snapshot(123, [BotsReading("g1", "a", doc())], Wanted(), defaults, 10)
    assert set(snap) == {"at_ms", "gateways", "totals", "reasons", "settings",
                         "wanted_settings", "lists"}  # fmt: skip
    assert snap["at_ms"] == 123 and snap["gateways"][0]["id"] == "g1"
