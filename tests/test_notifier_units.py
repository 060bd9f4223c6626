"""The notifier's pure parts and its outbox, without any process or server: the rate cap,
the backoff, what each ledger event means, contact details, the texts, the outbox's
transactions and deduplication, and the [notifier] config."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.config import ConfigError, build_config
from ledger import Ledger, Settings
from ledger.codec import encode_event
from notifier import outbox as outbox_module
from notifier.backoff import gives_up, retry_delay_ms
from notifier.contacts import (
    Channel,
    Contact,
    address_hash,
    contact_of,
    e164,
    hash_key,
    hashes_of,
)
from notifier.notices import (
    ClearInterest,
    ForgetOrder,
    NoteInterest,
    Notice,
    NotifyOrder,
    NotifyStock,
    Queue,
    RememberOrder,
    RememberProduct,
    effects_of,
)
from notifier.outbox import (
    MAX_SUBSCRIPTIONS_PER_USER,
    Outbox,
    OutboxBusy,
    Status,
    TooManySubscriptions,
)
from notifier.rate import TokenBucket
from notifier.render import MAX_SMS_CHARS, TEMPLATE_DIR, TemplateError, Templates
from pii.errors import KeyErased
from snapshots.ledger_feed import LedgerFeed
from snapshots.store import FeedPage

KEY = hash_key("unit-test-secret")
T0 = 1_767_225_600_000

# -- rate caps ---------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket.full(per_minute=60, burst=3, now_ms=0)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == 1_000  # one token a second
    assert bucket.take(500) == 500
    assert bucket.take(1_000) == 0
    # Idle for a long time: the bucket refills up to the burst, no further.
    assert [bucket.take(100_000) for _ in range(4)] == [0, 0, 0, 1_000]


def test_bulk_keeps_a_token_for_order_notices() -> None:
    bucket = TokenBucket.full(per_minute=60, burst=2, now_ms=0)
    assert bucket.take(0, keep=1) == 0
    assert bucket.take(0, keep=1) > 0  # bulk stops with one token left...
    assert bucket.take(0) == 0  # ...which an order notice takes at once
    # A keep of the whole burst would starve bulk: it is capped at burst - 1.
    lone = TokenBucket.full(per_minute=60, burst=1, now_ms=0)
    assert lone.take(0, keep=5) == 0


def test_token_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket.full(per_minute=0, burst=1, now_ms=0)
    with pytest.raises(ValueError):
        TokenBucket.full(per_minute=1, burst=0, now_ms=0)


# -- backoff -----------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    assert [retry_delay_ms(n, 100, 1_000, 0.0) for n in range(1, 7)] == [
        100, 200, 400, 800, 1_000, 1_000
    ]
    assert retry_delay_ms(3, 100, 1_000, 0.999) == pytest.approx(200, abs=1)
    assert retry_delay_ms(10_000, 100, 1_000, 0.0) == 1_000
    assert not gives_up(9, 10) and gives_up(10, 10)
    with pytest.raises(ValueError):
        retry_delay_ms(0, 100, 1_000, 0.0)
    with pytest.raises(ValueError):
        retry_delay_ms(1, 100, 1_000, 1.0)


# -- what events mean --------------------------------------------------------------------


def _events(led: Ledger, at_ms: int, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(encode_event(e)) for e in led.apply_encoded(at_ms, list(commands)).events]


def test_effects_of_a_sale() -> None:
    led = Ledger(Settings(payment_ttl_ms=1_000))
    created = _events(
        led,
        T0,
        {"type": "create_product", "key": "c", "product_id": "p", "name": "Shoe",
         "price_minor": 500, "total_stock": 2, "per_user_limit": 1},
    )
    assert effects_of(created[0]) == (RememberProduct("p", "Shoe"),)
    held = _events(led, T0, {"type": "reserve", "key": "r1", "user_id": "u1", "product_id": "p",
                             "quantity": 1})
    assert effects_of(held[0]) == (NoteInterest("p", "u1"),)
    limited = _events(led, T0, {"type": "reserve", "key": "r2", "user_id": "u1",
                                "product_id": "p", "quantity": 1})
    assert effects_of(limited[0]) == (NoteInterest("p", "u1"),)  # refused: limit reached
    placed = _events(led, T0, {"type": "checkout", "key": "k", "user_id": "u1",
                               "cart_id": held[0]["cart_id"], "sealed_details": "sealed!"})
    remember, notify = effects_of(placed[0])
    assert remember == RememberOrder(
        order_id="o1", user_id="u1", sealed_details="sealed!", amount_minor=500,
        currency="USD", pay_by_ms=T0 + 1_000, lines=(("p", 1, 500),),
    )
    assert notify == NotifyOrder(Notice.ORDER_PLACED, "o1")
    sold_out = _events(led, T0, {"type": "reserve", "key": "r3", "user_id": "u2",
                                 "product_id": "p", "quantity": 1})
    assert [effects_of(e) for e in sold_out][1] == (
        NotifyStock(Notice.SOLD_OUT, "p"), ClearInterest("p")
    )
    refused = _events(led, T0, {"type": "reserve", "key": "r4", "user_id": "u3",
                                "product_id": "p", "quantity": 1})
    assert refused[0]["data"]["reason"] == "sold_out" and effects_of(refused[0]) == ()
    expired = _events(led, T0 + 60_000, {"type": "expire", "key": "x"})
    kinds = {e["kind"]: effects_of(e) for e in expired}
    assert kinds["order_expired"] == (
        NotifyOrder(Notice.ORDER_EXPIRED, "o1", {"failure": "expired"}), ForgetOrder("o1")
    )
    assert kinds["back_in_stock"] == (NotifyStock(Notice.BACK_IN_STOCK, "p"),)


# -- contacts ----------------------------------------------------------------------------


def test_contact_of_details_keeps_plausible_addresses_only() -> None:
    c = contact_of(
        {"shipping_address": {"name": " Ada "}, "email": "a@b.io", "phone": "+33 6 12-34 56 78"}
    )
    assert c == Contact(email="a@b.io", phone="+33612345678", name="Ada")
    assert contact_of({"email": "nope", "phone": "0612345678"}) == Contact()
    assert e164("+1 (555) 000-1111") == "+15550001111"
    assert e164("+0123456789") is None and e164("+1234567890123456") is None
    assert e164(12345678) is None


def test_address_hashes_are_keyed_and_normalized() -> None:
    a = address_hash(KEY, Channel.EMAIL, "Ada@Example.com ")
    assert a == address_hash(KEY, Channel.EMAIL, "ada@example.com")
    assert a != address_hash(hash_key("other secret"), Channel.EMAIL, "ada@example.com")
    assert "ada" not in a and len(a) == 32
    assert hashes_of(KEY, Contact(phone="+15550001111")).keys() == {Channel.SMS}


# -- texts -------------------------------------------------------------------------------


def test_every_template_renders_and_html_is_escaped() -> None:
    t = Templates.load()
    contact = Contact(email="a@b.io", name="<Ada>")
    order = {"order_id": "o7", "amount_minor": 1999, "currency": "JPY", "pay_by_ms": T0,
             "lines": [["p", "<b>Shoe</b>", 1, 1999]]}
    stock = {"product_id": "p", "product_name": "<b>Shoe</b>"}
    for notice in Notice:
        params = stock if notice in (Notice.SOLD_OUT, Notice.BACK_IN_STOCK) else order
        email = t.email(notice, params, contact)
        assert email.subject and "$" not in email.text + email.html
        assert "<b>Shoe</b>" not in email.html and "&lt;Ada&gt;" in email.html
        assert t.sms(notice, params, contact)
    placed = t.email(Notice.ORDER_PLACED, order, contact)
    assert "1999 JPY" in placed.text and "2026-01-01 00:00 UTC" in placed.text
    long_name = {"product_id": "p", "product_name": "x" * 1_000}
    assert len(t.sms(Notice.SOLD_OUT, long_name, contact)) == MAX_SMS_CHARS


def test_a_template_with_an_unknown_placeholder_fails_at_load(tmp_path: Path) -> None:
    for source in TEMPLATE_DIR.iterdir():
        (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "sold_out.sms.txt").write_text("$product_name is gone, $customer_email\n")
    with pytest.raises(TemplateError, match="customer_email"):
        Templates.load(tmp_path)
    (tmp_path / "sold_out.sms.txt").unlink()
    with pytest.raises(TemplateError, match=r"sold_out\.sms\.txt"):
        Templates.load(tmp_path)


# -- the outbox --------------------------------------------------------------------------


def _unseal(sealed: str) -> Contact:
    """Test "sealing": the JSON of the details (the outbox only ever passes it along)."""
    if sealed == "erased":
        raise KeyErased("u", "k", 1)
    return contact_of(json.loads(sealed))


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    b = Outbox.open(
        tmp_path / "outbox.db",
        hash_key=KEY,
        channels=[Channel.EMAIL, Channel.SMS],
        stock_window_ms=60_000,
    )
    try:
        yield b
    finally:
        b.close()


def _sale() -> LedgerFeed:
    feed = LedgerFeed(10_000)
    feed.apply(T0, [{"type": "create_product", "key": "c", "product_id": "p", "name": "Shoe",
                     "price_minor": 100, "total_stock": 1}])
    return feed


async def _page(feed: LedgerFeed, start: int) -> FeedPage:
    return await feed.fetch(start, 10_000, 0)


def _order(feed: LedgerFeed, user: str, details: dict[str, Any], at_ms: int = T0) -> None:
    held = feed.apply(at_ms, [{"type": "reserve", "key": f"r-{user}", "user_id": user,
                               "product_id": "p", "quantity": 1}])
    cart = held.results[0].cart_id  # type: ignore[union-attr]
    feed.apply(at_ms, [{"type": "checkout", "key": f"k-{user}", "user_id": user,
                        "cart_id": cart, "sealed_details": json.dumps(details)}])


async def test_a_failing_page_commits_nothing_and_a_retry_records_each_notice_once(
    box: Outbox,
) -> None:
    feed = _sale()
    feed.apply(T0, [{"type": "restock", "key": "s", "product_id": "p", "quantity": 2}])
    _order(feed, "u1", {"email": "u1@x.io", "phone": "+15550001111"})
    _order(feed, "u2", {"email": "u2@x.io"})
    page = await _page(feed, 0)
    calls = 0

    def flaky(sealed: str) -> Contact:
        nonlocal calls
        calls += 1
        if calls == 2:  # the key store goes away halfway through the page
            raise OSError("key store unreachable")
        return _unseal(sealed)

    with pytest.raises(OSError):
        box.apply_page(page, flaky, T0)
    assert box.position() == 0 and box.summary()["rows"] == {}
    done = box.apply_page(page, _unseal, T0)
    assert done.index == feed.ledger.index
    assert box.summary()["rows"] == {"pending": 3}
    # The same page again (a restart that re-read it) adds nothing.
    again = box.apply_page(page, _unseal, T0)
    assert again.events == 0 and box.summary()["rows"] == {"pending": 3}


async def test_claim_retry_send_and_recover(box: Outbox) -> None:
    feed = _sale()
    _order(feed, "u1", {"email": "u1@x.io"})
    box.apply_page(await _page(feed, 0), _unseal, T0)
    row, stale = box.claim(Channel.EMAIL, Queue.ORDER, T0, 0)
    assert row is not None and stale == 0 and row.attempts == 1
    assert row.notice is Notice.ORDER_PLACED and row.params["lines"] == [["p", "Shoe", 1, 100]]
    assert box.claim(Channel.EMAIL, Queue.ORDER, T0, 0) == (None, 0)  # it is sending
    assert box.recover(T0) == 1  # the process died: due again
    row, _ = box.claim(Channel.EMAIL, Queue.ORDER, T0, 0)
    assert row is not None and row.attempts == 2
    box.mark_retry(row.id, T0 + 1_000, "SMTP 451")
    assert box.next_due_ms(Channel.EMAIL, Queue.ORDER) == T0 + 1_000
    assert box.claim(Channel.EMAIL, Queue.ORDER, T0 + 999, 0) == (None, 0)
    row, _ = box.claim(Channel.EMAIL, Queue.ORDER, T0 + 1_000, 0)
    assert row is not None and row.attempts == 3
    box.mark_sent(row.id, T0 + 1_001, "250 OK")
    assert box.summary()["rows"] == {"sent": 1} and box.summary()["sent"] == {"email": 1}
    # Finished rows go once the dedupe window is over; never pending ones.
    assert box.prune(T0 + 2_000) == 1


async def test_stale_rows_are_recorded_not_sent(box: Outbox) -> None:
    feed = _sale()
    _order(feed, "u1", {"email": "u1@x.io"}, at_ms=T0)
    box.apply_page(await _page(feed, 0), _unseal, T0)
    assert box.claim(Channel.EMAIL, Queue.ORDER, T0, stale_before_ms=T0 + 1) == (None, 1)
    assert box.summary()["rows"] == {"stale": 1}


async def test_stock_notices_deduplicate_per_address_within_the_window(box: Outbox) -> None:
    feed = _sale()
    box.apply_page(await _page(feed, 0), _unseal, T0)
    for user, email in (("a", "same@x.io"), ("b", "SAME@x.io"), ("c", "c@x.io")):
        box.subscribe("p", user, json.dumps({"email": email}), _unseal(json.dumps(
            {"email": email})), T0)
    position = box.position()

    def cycle(at_ms: int, n: int) -> None:
        held = feed.apply(at_ms, [{"type": "reserve", "key": f"h{n}", "user_id": "h",
                                   "product_id": "p", "quantity": 1}])
        hold = held.results[0].hold_id  # type: ignore[union-attr]
        feed.apply(at_ms, [{"type": "release", "key": f"x{n}", "user_id": "h", "hold_id": hold}])

    cycle(T0, 1)  # sold out, back in stock
    cycle(T0 + 30_000, 2)  # again, inside the 60 s window
    cycle(T0 + 61_000 + 30_000, 3)  # again, after it
    box.apply_page(await _page(feed, position), _unseal, T0)
    s = box.summary()
    # 2 addresses x (sold out, back in stock) x (first cycle, third cycle); the second
    # cycle is within the window of the first.
    assert s["rows"] == {"pending": 8, "deduped": 4}


async def test_erased_details_and_subscription_limit(
    box: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = _sale()
    feed.apply(T0, [{"type": "restock", "key": "s", "product_id": "p", "quantity": 1}])
    _order(feed, "gone", {"email": "gone@x.io"})
    box.apply_page(await _page(feed, 0), _unseal, T0)
    assert box.forget_user("gone") == 1
    assert box.summary()["rows"] == {"erased": 1}
    # An order whose details cannot be opened is recorded without a notice.
    held = feed.apply(T0, [{"type": "reserve", "key": "r9", "user_id": "z", "product_id": "p",
                            "quantity": 1}])
    cart = held.results[0].cart_id  # type: ignore[union-attr]
    feed.apply(T0, [{"type": "checkout", "key": "k9", "user_id": "z", "cart_id": cart,
                     "sealed_details": "erased"}])
    done = box.apply_page(await _page(feed, box.position()), _unseal, T0)
    assert done.enqueued == {} and box.summary()["rows"] == {"erased": 1}

    monkeypatch.setattr(outbox_module, "MAX_SUBSCRIPTIONS_PER_USER", 2)
    contact = Contact(email="fan@x.io")
    for product in ("a", "b", "a"):  # a repeat replaces, it does not count twice
        box.subscribe(product, "fan", "{}", contact, T0)
    with pytest.raises(TooManySubscriptions):
        box.subscribe("c", "fan", "{}", contact, T0)
    assert box.unsubscribe("a", "fan") and not box.unsubscribe("a", "fan")
    box.subscribe("c", "fan", "{}", contact, T0)
    assert MAX_SUBSCRIPTIONS_PER_USER == 100


async def test_a_snapshot_page_keeps_pending_orders_and_counts_the_gap(box: Outbox) -> None:
    feed = LedgerFeed(retention_events=3)
    feed.apply(T0, [{"type": "create_product", "key": "c", "product_id": "p", "name": "Shoe",
                     "price_minor": 100, "total_stock": 5}])
    _order(feed, "u1", {"email": "u1@x.io"})
    for i in range(5):  # push the order's events out of the tiny ring
        feed.apply(T0, [{"type": "restock", "key": f"s{i}", "product_id": "p", "quantity": 1}])
    page = await _page(feed, 0)
    assert page.snapshot is not None
    done = box.apply_page(page, _unseal, T0)
    assert done.rebuilt_from == page.snapshot["index"] and box.summary()["gaps"] == 1
    assert done.enqueued == {}  # the placed notice was in the gap
    paid = feed.apply(T0, [{"type": "record_payment", "key": "pay", "order_id": "o1",
                            "outcome": "paid", "amount_minor": 100}])
    assert [e.kind.value for e in paid.events] == ["order_completed"]
    done = box.apply_page(await _page(feed, box.position()), _unseal, T0)
    assert done.enqueued == {(Channel.EMAIL, Queue.ORDER): 1}  # the paid notice is not


def test_one_process_per_outbox(tmp_path: Path, box: Outbox) -> None:
    with pytest.raises(OutboxBusy):
        Outbox.open(
            tmp_path / "outbox.db", hash_key=KEY, channels=[Channel.EMAIL], stock_window_ms=0
        )
    assert Status.PENDING.value == "pending"


# -- config ------------------------------------------------------------------------------


def _config(tmp_path: Path, notifier: dict[str, Any], mode: str = "development") -> Any:
    key = base64.b64encode(b"k" * 32).decode()
    return build_config(
        {
            "cluster": {"secret": "s" * 40, "mode": mode, "data_dir": "var"},
            "pii": {"master_keys": {"k1": key}, "active_key": "k1"},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:7001", "api": "127.0.0.1:7101"}],
            "notifier": notifier,
        },
        tmp_path,
    )


def test_notifier_config_defaults_and_paths(tmp_path: Path) -> None:
    n = _config(tmp_path, {}).notifier
    assert n.listen is None and not n.email_enabled and not n.sms_enabled
    assert n.outbox == (tmp_path / "var").resolve() / "notifier" / "outbox.db"
    n = _config(
        tmp_path,
        {"listen": "127.0.0.1:8083", "smtp_host": "mail", "smtp_starttls": "false",
         "sms_url": "https://sms.example/Messages.json", "sms_account": "AC1",
         "sms_from": "+15550001111", "smtp_ca_file": "ca.pem"},
    ).notifier
    assert n.email_enabled and n.sms_enabled and not n.smtp_starttls
    assert n.smtp_ca_file == tmp_path / "ca.pem" and str(n.listen) == "127.0.0.1:8083"


@pytest.mark.parametrize(
    ("settings", "mode", "message"),
    [
        ({"batch_events": 10_001}, "development", "batch_events"),
        ({"feed_wait_ms": 30_001}, "development", "feed_wait_ms"),
        ({"retry_first_ms": 10, "retry_max_ms": 5}, "development", "retry_max_ms"),
        ({"sms_url": "https://x.example/m"}, "development", "sms_from"),
        ({"sms_url": "ftp://x"}, "development", "sms_url"),
        ({"sms_provider": "pigeon"}, "development", "sms_provider"),
        ({"smtp_port": 70_000}, "development", "smtp_port"),
        ({"listen": "127.0.0.1:7101"}, "development", "duplicate listen address"),
        ({"stock_notice_window_s": 100, "dedupe_window_s": 60}, "development", "window"),
        (
            {"smtp_host": "mail", "smtp_username": "u", "smtp_starttls": False},
            "production",
            "in clear",
        ),
    ],
)
def test_notifier_config_errors_name_the_key(
    tmp_path: Path, settings: dict[str, Any], mode: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, settings, mode)


# -- the command line --------------------------------------------------------------------


def test_up_runs_the_notifier_after_the_nodes_when_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import up
    from cli.main import build_parser, cmd_notifier

    servers = {"node.server", "notifier.server"}
    monkeypatch.setattr(up, "module_present", lambda name: name in servers)
    c = _config(tmp_path, {"listen": "127.0.0.1:8083", "smtp_host": "mail"})
    parts, skipped = up.plan(c, tmp_path / "cluster.toml")
    names = [p.spec.name for p in parts]
    assert names == ["n1", "notifier"]
    notifier = parts[1]
    assert notifier.spec.argv[-3:] == ("notifier", "--config", str(tmp_path / "cluster.toml"))
    assert notifier.spec.tier == up.EDGE_TIER, "it reads the nodes' feed: stops before them"
    assert [str(a) for a in notifier.listens] == ["127.0.0.1:8083"]
    assert "notices  email  ([notifier])" in up.banner(c, parts)

    servers.discard("notifier.server")
    parts, skipped = up.plan(c, tmp_path / "cluster.toml")
    assert "notifier" not in [p.spec.name for p in parts]
    assert "notifier.server is not installed: no email or SMS to shoppers" in skipped
    # Without a listen address it is not part of `up` at all.
    parts, skipped = up.plan(_config(tmp_path, {}), tmp_path / "cluster.toml")
    assert "notifier" not in [p.spec.name for p in parts] and not any(
        "notifier" in line for line in skipped
    )
    args = build_parser().parse_args(["notifier", "--config", "x.toml"])
    assert args.handler is cmd_notifier and args.config == "x.toml"
