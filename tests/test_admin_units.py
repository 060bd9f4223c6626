"""The console's pure parts: money, passwords, the login limit, the cluster view, forms,
escaping, the database schema and the feed follower's bookkeeping."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admin import audit
from admin.cluster_view import (
    GatewayReading,
    leader_id,
    node_rows,
    rate_per_s,
    request_total,
)
from admin.feed import FeedFollower, OrderRate, ShopperIndex
from admin.limits import (
    LOGIN_ATTEMPTS_PER_IP,
    LOGIN_FAILURES_PER_USERNAME,
    LOGIN_WINDOW_MS,
    MAX_PASSWORD_LEN,
    MAX_SESSIONS_PER_OPERATOR,
    MAX_SSE_SUBSCRIBERS,
    MAX_TRACKED_LOGIN_KEYS,
    MAX_USERNAME_LEN,
    MIN_PASSWORD_LEN,
    SESSION_IDLE_MS,
    SESSION_TOUCH_MS,
    SESSION_TTL_MS,
)
from admin.live import LiveHub, TooManySubscribers
from admin.login_limit import LoginLimiter
from admin.money import MoneyError, from_minor, to_minor
from admin.operators import (
    OperatorError,
    create_operator,
    create_operator_cli,
    credentials,
    password_matches,
)
from admin.passwords import PasswordPolicyError, check_policy, hash_password, verify_password
from admin.pii import UnsealError, unseal
from admin.product_forms import (
    FormError,
    close_command,
    create_command,
    open_command,
    restock_command,
    update_command,
)
from admin.render import Markup, render, tag
from admin.sessions import csrf_ok, lookup, start_session
from admin.store import SCHEMA_VERSION, StoreError, open_store, schema_version
from cluster.config import ClusterConfig, build_config
from ledger.limits import MAX_PRICE_MINOR
from pii.keystore import KeyStore
from pii.sealing import Sealer

PASSWORD = "correct horse battery"


def config(tmp_path: Path) -> ClusterConfig:
    return build_config(
        {
            "cluster": {"data_dir": str(tmp_path), "secret": "test-secret"},
            "nodes": [
                {"id": "n1", "raft": "127.0.0.1:17001", "api": "127.0.0.1:17101"},
                {"id": "n2", "raft": "127.0.0.1:17002", "api": "127.0.0.1:17102"},
                {"id": "n3", "raft": "127.0.0.1:17003", "api": "127.0.0.1:17103"},
            ],
            "gateways": [{"id": "g1", "listen": "127.0.0.1:18080"}],
        },
        tmp_path,
    )


# -- money -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("19.99", "USD", 1999),
        ("0.10", "EUR", 10),
        ("7", "USD", 700),
        ("1500", "JPY", 1500),
        ("1.234", "KWD", 1234),
        ("0", "USD", 0),
        (" 3.5 ", "usd", 350),
    ],
)
def test_price_converts_exactly_to_minor_units(text: str, currency: str, minor: int) -> None:
    assert to_minor(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("19.999", "USD"),
        ("1.5", "JPY"),
        ("-1", "USD"),
        ("1e3", "USD"),
        ("19,99", "EUR"),
        ("", "USD"),
        ("abc", "USD"),
        ("1.00", "US"),
        ("NaN", "USD"),
        (str(MAX_PRICE_MINOR // 100 + 1), "USD"),
    ],
)
def test_price_that_is_not_exactly_representable_is_refused(text: str, currency: str) -> None:
    with pytest.raises(MoneyError):
        to_minor(text, currency)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=MAX_PRICE_MINOR), st.sampled_from(["USD", "JPY", "KWD"]))
def test_minor_units_round_trip_through_text(minor: int, currency: str) -> None:
    assert to_minor(from_minor(minor, currency), currency) == minor


# -- passwords and operators -------------------------------------------------------------


def test_password_hash_is_salted_scrypt_and_verifies() -> None:
    one, two = hash_password(PASSWORD), hash_password(PASSWORD)
    assert one.startswith("scrypt$") and one != two  # a fresh salt each time
    assert verify_password(PASSWORD, one) and verify_password(PASSWORD, two)
    assert not verify_password(PASSWORD + "!", one)
    assert not verify_password(PASSWORD, "scrypt$15$8$1$not-base64$x")
    assert not verify_password(PASSWORD, "plain")


def test_password_policy_bounds_length() -> None:
    with pytest.raises(PasswordPolicyError):
        check_policy("x" * (MIN_PASSWORD_LEN - 1))
    with pytest.raises(PasswordPolicyError):
        check_policy("x" * (MAX_PASSWORD_LEN + 1))
    check_policy("x" * MIN_PASSWORD_LEN)
    assert not verify_password("x" * (MAX_PASSWORD_LEN + 1), hash_password(PASSWORD))


def test_operator_is_created_once_and_audited(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    op = create_operator(conn, "Alice", PASSWORD, ["operator", "pii"], at_ms=5, created_by="cli")
    assert op.username == "alice" and op.rights == {"operator", "pii"}
    with pytest.raises(OperatorError):
        create_operator(conn, "alice", PASSWORD, [], at_ms=6, created_by="cli")
    with pytest.raises(OperatorError):
        create_operator(conn, "bob", PASSWORD, ["root"], at_ms=6, created_by="cli")
    with pytest.raises(OperatorError):
        create_operator(conn, "../bob", PASSWORD, [], at_ms=6, created_by="cli")
    with pytest.raises(PasswordPolicyError):
        create_operator(conn, "bob", "short", [], at_ms=6, created_by="cli")
    assert password_matches(credentials(conn, "ALICE"), PASSWORD) == op
    assert password_matches(credentials(conn, "alice"), "wrong password!") is None
    assert password_matches(credentials(conn, "nobody"), PASSWORD) is None
    rows = audit.recent(conn, 10)
    assert [(r.action, r.operator, r.target) for r in rows] == [("operator.create", "cli", "alice")]
    stored = conn.execute("SELECT password_hash FROM operators").fetchone()[0]
    assert PASSWORD not in stored


def test_create_operator_cli_reports_and_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path)
    assert create_operator_cli(cfg, "root", PASSWORD, ["operator"]) == 0
    assert "created operator 'root'" in capsys.readouterr().out
    assert create_operator_cli(cfg, "root", PASSWORD, ["operator"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert create_operator_cli(cfg, "shorty", "short", ["operator"]) == 1
    assert (tmp_path / "admin.db").stat().st_mode & 0o077 == 0  # private: holds hashes


# -- sessions ---------------------------------------------------------------------------


def test_session_token_is_stored_only_as_a_hash(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    op = create_operator(conn, "alice", PASSWORD, ["operator"], at_ms=0, created_by="cli")
    token, session = start_session(conn, op, ip="127.0.0.1", now_ms=1_000)
    stored = [r[0] for r in conn.execute("SELECT token_hash FROM sessions")]
    assert token not in stored and session.token_hash in stored
    assert lookup(conn, token, now_ms=2_000) is not None
    assert lookup(conn, token + "x", now_ms=2_000) is None
    assert (
        csrf_ok(session, session.csrf_token)
        and not csrf_ok(session, "")
        and not csrf_ok(session, session.csrf_token[:-1])
    )


def test_session_ends_when_idle_or_too_old(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    op = create_operator(conn, "alice", PASSWORD, [], at_ms=0, created_by="cli")
    idle_token, _ = start_session(conn, op, ip="", now_ms=0)
    assert lookup(conn, idle_token, now_ms=SESSION_IDLE_MS - 1) is not None
    assert lookup(conn, idle_token, now_ms=2 * SESSION_IDLE_MS) is None
    old_token, _ = start_session(conn, op, ip="", now_ms=0)
    now = 0
    while now + SESSION_IDLE_MS // 2 < SESSION_TTL_MS:  # kept busy, never idle
        now += SESSION_IDLE_MS // 2
        assert lookup(conn, old_token, now_ms=now) is not None
    assert lookup(conn, old_token, now_ms=SESSION_TTL_MS) is None


def test_sessions_per_operator_are_bounded(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    op = create_operator(conn, "alice", PASSWORD, [], at_ms=0, created_by="cli")
    tokens = [
        start_session(conn, op, ip="", now_ms=i)[0] for i in range(MAX_SESSIONS_PER_OPERATOR + 3)
    ]
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == MAX_SESSIONS_PER_OPERATOR
    assert lookup(conn, tokens[0], now_ms=100) is None  # the oldest went first
    assert lookup(conn, tokens[-1], now_ms=100) is not None


# -- store ------------------------------------------------------------------------------


def test_schema_is_versioned_and_newer_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin.db"
    conn = open_store(path)
    assert schema_version(conn) == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError):
        open_store(path)
    plain = sqlite3.connect(tmp_path / "other.db")
    plain.close()
    assert schema_version(open_store(tmp_path / "other.db")) == SCHEMA_VERSION


# -- login limit ------------------------------------------------------------------------


def test_login_limit_per_username_counts_failures_in_a_window() -> None:
    limiter = LoginLimiter()
    for i in range(LOGIN_FAILURES_PER_USERNAME):
        assert limiter.check(f"10.0.0.{i}", "alice", now_ms=i) == 0
        limiter.failed("alice", now_ms=i)
    wait = limiter.check("10.0.1.1", "alice", now_ms=100)
    assert 0 < wait <= LOGIN_WINDOW_MS
    assert limiter.check("10.0.1.1", "bob", now_ms=100) == 0  # other names unaffected
    assert limiter.check("10.0.1.1", "alice", now_ms=LOGIN_WINDOW_MS + 10) == 0


def test_login_limit_success_clears_the_username() -> None:
    limiter = LoginLimiter()
    for i in range(LOGIN_FAILURES_PER_USERNAME - 1):
        limiter.failed("alice", now_ms=i)
    limiter.succeeded("alice")
    for i in range(LOGIN_FAILURES_PER_USERNAME - 1):
        limiter.failed("alice", now_ms=10 + i)
    assert limiter.check("ip", "alice", now_ms=50) == 0


def test_login_limit_per_address_counts_every_attempt() -> None:
    limiter = LoginLimiter()
    for i in range(LOGIN_ATTEMPTS_PER_IP):
        assert limiter.check("10.0.0.1", f"user{i}", now_ms=i) == 0
    assert limiter.check("10.0.0.1", "another", now_ms=LOGIN_ATTEMPTS_PER_IP) > 0
    assert limiter.check("10.0.0.2", "another", now_ms=LOGIN_ATTEMPTS_PER_IP) == 0


def test_login_limit_memory_is_bounded() -> None:
    limiter = LoginLimiter()
    for i in range(MAX_TRACKED_LOGIN_KEYS + 50):
        limiter.failed(f"user{i}", now_ms=i)
    assert len(limiter.by_user.entries) == MAX_TRACKED_LOGIN_KEYS


# -- cluster view -----------------------------------------------------------------------


def status(role: str, term: int, commit: int) -> dict[str, object]:
    return {
        "role": role,
        "term": term,
        "commit_index": commit,
        "last_applied": commit,
        "log_size": 10,
        "uptime_s": 12.5,
        "leader": {"id": "n1", "api": "x"},
    }


def test_node_rows_show_lag_behind_the_leader_and_down_nodes(tmp_path: Path) -> None:
    rows = node_rows(
        config(tmp_path),
        {"n1": status("leader", 4, 100), "n2": status("follower", 4, 93), "n3": None},
    )
    assert [(r.id, r.up, r.role, r.lag) for r in rows] == [
        ("n1", True, "leader", 0),
        ("n2", True, "follower", 7),
        ("n3", False, "down", None),
    ]


def test_lag_is_unknown_without_a_leader_and_never_negative(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    rows = node_rows(
        cfg, {"n1": status("candidate", 5, 10), "n2": status("follower", 4, 9), "n3": None}
    )
    assert [r.lag for r in rows] == [None, None, None]
    rows = node_rows(
        cfg, {"n1": status("leader", 4, 10), "n2": status("follower", 4, 12), "n3": None}
    )
    assert rows[1].lag == 0


def test_the_leader_with_the_highest_term_wins() -> None:
    assert leader_id({"n1": status("leader", 3, 1), "n2": status("leader", 5, 1)}) == "n2"
    assert leader_id({"n1": None, "n2": status("follower", 5, 1)}) is None


def test_gateway_request_total_and_rate() -> None:
    text = (
        "# HELP flashsale_gateway_requests_total HTTP requests\n"
        "# TYPE flashsale_gateway_requests_total counter\n"
        'flashsale_gateway_requests_total{route="/inventory/{id}",method="GET",status="200"} 90\n'
        'flashsale_gateway_requests_total{route="/add-to-cart",method="POST",status="200"} 10\n'
        'flashsale_gateway_requests_total{route="/metrics",method="GET",status="200"} 500\n'
    )
    assert request_total(text) == 100.0  # the console's own scrapes are left out
    assert request_total("other_metric 3\n") is None
    a = GatewayReading(100.0, 1_000, True)
    b = GatewayReading(150.0, 3_000, True)
    assert rate_per_s(a, b) == 25.0
    assert rate_per_s(None, b) is None
    assert rate_per_s(b, GatewayReading(3.0, 4_000, True)) is None  # counter reset


# -- forms ------------------------------------------------------------------------------

GOOD_FORM = {
    "key": "admin-k1",
    "product_id": "tee-1",
    "name": "T-shirt <b>",
    "price": "19.99",
    "currency": "usd",
    "total_stock": "100",
    "opens_at": "2030-01-02T03:04",
    "closes_at": "",
    "per_user_limit": "2",
    "hold_ttl_s": "300",
}


def test_create_form_becomes_a_create_product_command() -> None:
    assert create_command(GOOD_FORM) == {
        "type": "create_product",
        "key": "admin-k1",
        "product_id": "tee-1",
        "name": "T-shirt <b>",
        "price_minor": 1999,
        "currency": "USD",
        "total_stock": 100,
        "opens_at_ms": 1893553440000,
        "closes_at_ms": None,
        "per_user_limit": 2,
        "hold_ttl_ms": 300_000,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("product_id", "a b"),
        ("product_id", ""),
        ("name", ""),
        ("price", "1.001"),
        ("total_stock", "-1"),
        ("total_stock", "ten"),
        ("per_user_limit", "0"),
        ("hold_ttl_s", "0"),
        ("opens_at", "tomorrow"),
        ("key", "bad key!"),
        ("currency", "dollars"),
    ],
)
def test_bad_create_form_names_the_field(field: str, value: str) -> None:
    with pytest.raises(FormError) as info:
        create_command({**GOOD_FORM, field: value})
    assert info.value.field == field


def test_window_must_close_after_it_opens() -> None:
    with pytest.raises(FormError) as info:
        create_command({**GOOD_FORM, "closes_at": "2030-01-01T00:00"})
    assert info.value.field == "closes_at"


def test_edit_form_clears_blank_window_and_limit() -> None:
    cmd = update_command({**GOOD_FORM, "opens_at": "", "per_user_limit": ""}, "tee-1", "USD")
    assert cmd["clear_opens"] and cmd["clear_closes"] and cmd["clear_limit"]
    assert cmd["opens_at_ms"] is None and cmd["per_user_limit"] is None
    assert cmd["price_minor"] == 1999


def test_restock_open_and_close_commands() -> None:
    assert restock_command({"key": "admin-r", "quantity": "-3"}, "tee-1")["quantity"] == -3
    with pytest.raises(FormError):
        restock_command({"quantity": "0"}, "tee-1")
    assert open_command({}, "tee-1")["clear_opens"] is True
    assert close_command({}, "tee-1", 1234)["closes_at_ms"] == 1234
    assert open_command({}, "tee-1")["key"] != open_command({}, "tee-1")["key"]


# -- escaping ---------------------------------------------------------------------------


def test_templates_escape_every_value_unless_markup() -> None:
    html = render("error.html", {"status": 400, "title": "<script>x</script>", "detail": "a&b"})
    assert "<script>x" not in html and "&lt;script&gt;x" in html and "a&amp;b" in html
    assert (
        tag("td", '"><img>', data_k='"q"')
        == '<td data-k="&quot;q&quot;">&quot;&gt;&lt;img&gt;</td>'
    )
    assert tag("p", Markup("<b>ok</b>")) == "<p><b>ok</b></p>"


# -- feed bookkeeping -------------------------------------------------------------------


def test_shopper_index_is_bounded_and_newest_first() -> None:
    index = ShopperIndex(capacity=3)
    for i in range(5):
        index.add("u1" if i % 2 == 0 else "u2", f"o{i}")
    assert len(index) == 3
    assert index.orders_of("u1") == ["o4", "o2"]
    assert index.orders_of("u2") == ["o3"]


def test_order_rate_counts_per_second() -> None:
    rate = OrderRate()
    for at in (1_000, 1_500, 1_999, 2_000):
        rate.add(at)
    assert (rate.in_second(1), rate.in_second(2), rate.in_second(3)) == (3, 1, 0)


def test_feed_follower_resets_from_a_snapshot_then_applies_events() -> None:
    follower = FeedFollower(cluster=None)  # type: ignore[arg-type]
    follower.absorb(
        {
            "events": [
                {
                    "index": 3,
                    "kind": "order_placed",
                    "at_ms": 5_000,
                    "user_id": "old",
                    "order_id": "o0",
                }
            ],
            "last_index": 3,
            "snapshot": None,
        }
    )
    follower.absorb(
        {
            "snapshot": {
                "index": 40,
                "orders": [{"order_id": "o1", "user_id": "u1", "created_at_ms": 1}],
            },
            "events": [
                {
                    "index": 41,
                    "kind": "order_placed",
                    "at_ms": 9_000,
                    "user_id": "u1",
                    "order_id": "o2",
                },
                {"index": 41, "kind": "hold_placed", "at_ms": 9_000},
            ],
            "last_index": 41,
        }
    )
    assert follower.last_index == 41
    assert follower.shoppers.orders_of("u1") == ["o2", "o1"]
    assert follower.shoppers.orders_of("old") == []  # the snapshot replaced the index
    assert follower.rate.in_second(9) == 1
    follower.absorb({"events": [], "last_index": 45, "snapshot": None})
    assert follower.last_index == 45


# -- unsealing --------------------------------------------------------------------------


def test_unseal_opens_what_the_gateway_sealed_and_refuses_what_it_cannot_read(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    keys = KeyStore.open(cfg)
    try:
        sealer = Sealer(keys)
        sealed = sealer.seal("u1", {"city": "Lyon"})
        erased = sealer.seal("u2", {"city": "Oslo"})
        keys.erase("u2")
    finally:
        keys.close()
    assert "Lyon" not in sealed
    assert unseal(cfg, sealed) == {"user_id": "u1", "details": {"city": "Lyon"}}

    with pytest.raises(UnsealError, match=r"personal data of 'u2' is erased"):
        unseal(cfg, erased)
    head, _, payload = sealed.rpartition(".")
    middle = len(payload) // 2
    flipped = "A" if payload[middle] != "A" else "B"
    tampered = f"{head}.{payload[:middle]}{flipped}{payload[middle + 1 :]}"
    with pytest.raises(UnsealError, match="fail authentication"):
        unseal(cfg, tampered)
    with pytest.raises(UnsealError, match="no personal details"):
        unseal(cfg, "")
    for text in ("v1.dk0123456789abcdef.u1.AAAA", "{not json", '{"format": "json/v1"}'):
        with pytest.raises(UnsealError):
            unseal(cfg, text)


def test_username_length_is_bounded(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    with pytest.raises(OperatorError):
        create_operator(conn, "a" * (MAX_USERNAME_LEN + 1), PASSWORD, [], at_ms=0, created_by="t")
    create_operator(conn, "a" * MAX_USERNAME_LEN, PASSWORD, [], at_ms=0, created_by="t")


def test_last_seen_is_written_at_most_once_per_touch_interval(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "admin.db")
    op = create_operator(conn, "alice", PASSWORD, [], at_ms=0, created_by="cli")
    token, _ = start_session(conn, op, ip="", now_ms=0)

    def last_seen() -> int:
        return int(conn.execute("SELECT last_seen_ms FROM sessions").fetchone()[0])

    lookup(conn, token, now_ms=SESSION_TOUCH_MS - 1)
    assert last_seen() == 0
    lookup(conn, token, now_ms=SESSION_TOUCH_MS)
    assert last_seen() == SESSION_TOUCH_MS


def test_live_streams_are_bounded() -> None:
    hub = LiveHub(None, None, None, None, lambda: 0)  # type: ignore[arg-type]
    subs = [hub.subscribe() for _ in range(MAX_SSE_SUBSCRIBERS)]
    with pytest.raises(TooManySubscribers):
        hub.subscribe()
    hub.unsubscribe(subs[0])
    hub.subscribe()
    hub.close()
    with pytest.raises(TooManySubscribers):  # shutting down: no new streams
        hub.subscribe()
