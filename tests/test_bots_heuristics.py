"""Heuristic scoring (bots.heuristics), the block/allow lists (bots.lists) and the live
settings' validation (bots.settings): pure functions and bounded memories."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bots.heuristics import (
    NOTED_SIGNALS,
    SIGNAL_MEMORY_S,
    WEIGHTS,
    Evidence,
    Suspicion,
    accounts_signal,
    score,
    user_agent_signal,
)
from bots.lists import BotLists, IpIndex, ListFull, normalize
from bots.policy import BotPolicy
from bots.settings import InvalidSetting, parse_settings
from cluster.config import BotsConfig

BLOCK = BotsConfig().block_score  # 100
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
HEADLESS = CHROME.replace("Chrome/", "HeadlessChrome/")


@pytest.mark.parametrize(
    ("ua", "signal"),
    [
        (CHROME, None),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Safari/604.1", None),
        (HEADLESS, "headless-ua"),
        ("Mozilla/5.0 PhantomJS/2.1.1", "headless-ua"),
        ("python-requests/2.32.3", "scripted-ua"),
        ("curl/8.5.0", "scripted-ua"),
        ("Go-http-client/1.1", "scripted-ua"),
        ("Python/3.11 aiohttp/3.14.5", "scripted-ua"),
        ("Wget/1.21", "scripted-ua"),
        (None, "missing-ua"),
        ("   ", "missing-ua"),
    ],
)
def test_user_agents_are_classified(ua: str | None, signal: str | None) -> None:
    assert user_agent_signal(ua) == signal


def test_a_browser_scores_nothing() -> None:
    assert score(Evidence(CHROME, 1, {}), 20) == (0, ())


def test_no_single_soft_signal_blocks_and_headless_chrome_is_only_a_hint() -> None:
    # Our own browser tests drive Debian's chromium headless: it must pass on its own,
    # and even from an IP with many accounts (the demo: everything is 127.0.0.1).
    for evidence in (
        Evidence(HEADLESS, 1, {}),
        Evidence(None, 1, {}),
        Evidence("curl/8.5.0", 1, {}),
        Evidence(CHROME, 40, {}),  # many accounts, not yet a farm (up to 2 x 20)
        Evidence(HEADLESS, 40, {}),
        Evidence(CHROME, 1, {"fast-write": 1}),
        Evidence(CHROME, 1, {"fast-write": 5}),
        Evidence(HEADLESS, 1, {"fast-write": 5}),  # Playwright clicking at once, twice
        Evidence(CHROME, 1, {"solution-replay": 1}),
    ):
        total, reasons = score(evidence, 20)
        assert 0 < total < BLOCK, (evidence, total, reasons)
    assert WEIGHTS["headless-ua"] < WEIGHTS["scripted-ua"]


@pytest.mark.parametrize(
    ("evidence", "reasons"),
    [
        (Evidence("python-requests/2.32", 21, {}), ("scripted-ua", "many-accounts")),
        (Evidence(None, 21, {}), ("missing-ua", "many-accounts")),
        (Evidence("curl/8", 1, {"fast-write": 2}), ("scripted-ua", "fast-write")),
        (Evidence(CHROME, 1, {"solution-replay": 2}), ("solution-replay",)),
        (Evidence(HEADLESS, 21, {"fast-write": 1}), ("headless-ua", "many-accounts", "fast-write")),
    ],
)
def test_evidence_that_adds_up_blocks_and_says_why(
    evidence: Evidence, reasons: tuple[str, ...]
) -> None:
    total, why = score(evidence, 20)
    assert total >= BLOCK and why == reasons


def test_accounts_score_only_beyond_the_allowance() -> None:
    assert score(Evidence(CHROME, 20, {}), 20) == (0, ())
    assert score(Evidence(CHROME, 21, {}), 20) == (WEIGHTS["many-accounts"], ("many-accounts",))
    assert score(Evidence(CHROME, 40, {}), 20) == (WEIGHTS["many-accounts"], ("many-accounts",))
    # Beyond twice the allowance: an account farm, blocked on that alone.
    assert score(Evidence(CHROME, 41, {}), 20) == (WEIGHTS["account-farm"], ("account-farm",))
    assert WEIGHTS["account-farm"] >= BLOCK > WEIGHTS["many-accounts"] + WEIGHTS["headless-ua"]


@given(st.integers(0, 10_000), st.integers(1, 1000))
def test_the_accounts_signal_escalates_with_the_count(accounts: int, allowance: int) -> None:
    signal = accounts_signal(accounts, allowance)
    expected = (None if accounts <= allowance
                else "many-accounts" if accounts <= 2 * allowance else "account-farm")  # fmt: skip
    assert signal == expected
    # One more account never lowers the score, and a browser is blocked on its count
    # alone exactly when it is beyond twice the allowance.
    here = score(Evidence(CHROME, accounts, {}), allowance)[0]
    assert score(Evidence(CHROME, accounts + 1, {}), allowance)[0] >= here
    assert (here >= BLOCK) == (accounts > 2 * allowance)


@given(st.dictionaries(st.sampled_from(sorted(NOTED_SIGNALS)), st.integers(0, 1000)))
def test_noted_signals_count_up_to_their_cap(noted: dict[str, int]) -> None:
    total, _ = score(Evidence(CHROME, 0, noted), 20)
    cap = sum(WEIGHTS[s] * n for s, n in NOTED_SIGNALS.items())
    assert 0 <= total <= cap


def test_suspicion_counts_distinct_shoppers_per_ip_within_the_window() -> None:
    memory = Suspicion(accounts_window_s=600, max_clients=1000)
    for i in range(21):
        seen = memory.observe("10.0.0.1", f"guest{i}", 1000.0 + i)
    assert seen == 21
    assert memory.observe("10.0.0.1", "guest3", 1030.0) == 21  # the same shopper again
    assert memory.observe("10.0.0.2", "guest3", 1030.0) == 1  # another IP is apart
    # Past the window, only the recently seen remain.
    assert memory.observe("10.0.0.1", None, 1000.0 + 600 + 10.5) == 11  # 11..20, guest3
    total, reasons = memory.assess("10.0.0.1", "x", "curl/8", 1611.0, 20)
    assert "many-accounts" not in reasons and total == WEIGHTS["scripted-ua"]


def test_suspicion_memory_is_bounded() -> None:
    memory = Suspicion(accounts_window_s=600, max_clients=100)
    for i in range(5000):
        memory.observe(f"10.0.{i // 250}.{i % 250}", f"s{i}", 1000.0)
        memory.note(f"10.1.{i // 250}.{i % 250}", f"t{i}", "fast-write", 1000.0)
    assert memory.tracked <= 200
    # The newest are the ones kept.
    assert memory.noted("10.1.19.249", None, 1000.0) == {"fast-write": 1}
    assert memory.noted("10.1.0.0", "t0", 1000.0) == {}


def test_noted_signals_follow_the_ip_and_the_shopper_and_fade() -> None:
    memory = Suspicion(accounts_window_s=600, max_clients=1000)
    memory.note("10.0.0.1", "mallory", "solution-replay", 100.0)
    memory.note("10.0.0.2", "mallory", "solution-replay", 101.0)  # new IP, same shopper
    assert memory.noted("10.0.0.3", "mallory", 102.0) == {"solution-replay": 2}
    assert memory.noted("10.0.0.1", "someone", 102.0) == {"solution-replay": 1}
    total, reasons = memory.assess("10.0.0.9", "mallory", CHROME, 102.0, 20)
    assert total >= BLOCK and reasons == ("solution-replay",)
    assert memory.noted("10.0.0.1", "mallory", 101.0 + SIGNAL_MEMORY_S) == {}
    with pytest.raises(ValueError):
        memory.note("10.0.0.1", None, "bad-vibes", 0.0)


# -- lists -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "canonical"),
    [
        ("block_ips", "192.0.2.7", "192.0.2.7"),
        ("block_ips", "192.0.2.7/32", "192.0.2.7"),
        ("block_ips", "10.1.2.3/8", "10.0.0.0/8"),
        ("allow_ips", "2001:db8::1/64", "2001:db8::/64"),
        # What a dual-stack gateway logs: kept as IPv4, the form clients are looked up in.
        ("block_ips", "::ffff:10.0.0.1", "10.0.0.1"),
        ("block_ips", "::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("block_shoppers", "mallory", "mallory"),
    ],
)
def test_entries_are_normalized(name: str, value: str, canonical: str) -> None:
    assert normalize(name, value) == canonical


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("block_ips", "not-an-ip"),
        ("block_ips", "10.0.0.0/33"),
        ("block_ips", ""),
        ("block_shoppers", "has space"),
        ("block_shoppers", "x" * 65),
        ("grey_ips", "10.0.0.1"),
    ],
)
def test_bad_entries_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        normalize(name, value)


def test_networks_and_addresses_match_including_mapped_ipv6() -> None:
    index = IpIndex(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
    assert "10.200.1.1" in index and "192.0.2.7" in index and "::ffff:10.1.1.1" in index
    assert "2001:db8:ffff::1" in index
    assert "192.0.2.8" not in index and "11.0.0.1" not in index and "garbage" not in index


def test_a_mapped_ipv6_entry_matches_the_client_in_both_forms() -> None:
    index = IpIndex([normalize("block_ips", "::ffff:10.0.0.1")])
    assert "10.0.0.1" in index and "::ffff:10.0.0.1" in index


def test_lists_block_allow_and_are_capped() -> None:
    policy = BotPolicy.from_config(BotsConfig())
    lists = BotLists(policy, max_entries=3)
    lists.add("block_ips", "10.0.0.0/8")
    lists.add("block_ips", "10.0.0.0/8")  # twice is fine
    lists.add("allow_shoppers", "vip")
    assert lists.blocked("10.9.9.9", None) and not lists.blocked("11.0.0.1", "x")
    assert lists.allowed("11.0.0.1", "vip") and not lists.allowed("11.0.0.1", None)
    lists.add("block_ips", "192.0.2.1")
    lists.add("block_ips", "192.0.2.2")
    with pytest.raises(ListFull):
        lists.add("block_ips", "192.0.2.3")
    assert list(policy.lists["block_ips"]) == ["10.0.0.0/8", "192.0.2.1", "192.0.2.2"]
    lists.remove("block_ips", "10.1.1.1/8")  # the same network, written differently
    lists.remove("block_ips", "10.0.0.0/8")  # already gone: fine
    assert not lists.blocked("10.9.9.9", None)


# -- settings ----------------------------------------------------------------------------


def test_settings_are_validated() -> None:
    assert parse_settings({}) == {}
    assert parse_settings({"admission_rate": 5, "block_score": 150}) == {
        "admission_rate": 5.0, "block_score": 150
    }
    for bad in ({"block_score": 0}, {"block_score": 1001}, {"block_score": 1.5},
                {"block_score": True}, {"challenge_difficulty": 999},
                {"challenge_difficulty": 10_000_001}, {"admission_rate": 0.05},
                {"admission_rate": "fast"}, {"colour": 1}, ["block_score"]):  # fmt: skip
        with pytest.raises(InvalidSetting):
            parse_settings(bad)
