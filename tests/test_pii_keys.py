"""Data keys over their life: GDPR export and erasure (crypto-shredding), master key
rotation, and the [pii] config that holds the master keys."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.config import DEV_MASTER_KEY_B64, ClusterConfig, ConfigError, load_config
from pii import keystore
from pii.cli import gdpr_erase, gdpr_export, rotate_keys
from pii.errors import KeyErased, MasterKeyMissing, PiiConfigError, PiiError
from pii.keystore import KeyStore
from pii.sealing import Sealer, Unsealer
from snapshots.ledger_feed import LedgerFeed
from snapshots.sale import SALE_SETTINGS, shipping_details, simulate_sale
from snapshots.store import SnapshotStore
from tests.support.stores import STORE_KINDS, config_with, store_url

K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as u:
        yield u


def sale_into(url: str, config: ClusterConfig, entries: int = 80) -> LedgerFeed:
    """A sale whose checkouts carry sealed details, written into the store at ``url``."""
    keys = KeyStore.open(config)
    feed = LedgerFeed(10**7, SALE_SETTINGS)
    try:
        simulate_sale(feed, seed=4, entries=entries, shoppers=20, seal=Sealer(keys).seal)
    finally:
        keys.close()
    store = SnapshotStore.open(url)
    try:
        store.apply_page(asyncio.run(feed.fetch(0, 10**6, 0)), 0)
    finally:
        store.close()
    return feed


def shopper_with_orders(config: ClusterConfig) -> str:
    keys = KeyStore.open(config)
    try:
        found = keys.db.query(
            "SELECT user_id FROM orders WHERE pii_sealed IS NOT NULL ORDER BY user_id LIMIT 1"
        )
        return str(found[0][0])
    finally:
        keys.close()


def test_export_gives_the_shoppers_orders_with_their_details_opened(
    url: str, tmp_path: Path
) -> None:
    config = config_with(url, tmp_path)
    sale_into(url, config)
    user = shopper_with_orders(config)
    export = gdpr_export(config, user)
    assert export["user_id"] == user
    assert export["as_of_ledger_index"] > 0
    assert export["data_key"] is not None and export["erasures"] == []
    sealed_orders = [o for o in export["orders"] if o["personal_details"]["status"] != "none"]
    assert sealed_orders
    for order in sealed_orders:
        assert order["personal_details"] == {"status": "present", "details": shipping_details(user)}
        assert order["lines"] and order["amount_minor"] > 0
    assert {p["order_id"] for p in export["payments"]} == {o["order_id"] for o in export["orders"]}
    assert all(c for c in export["cart"])
    assert gdpr_export(config, "nobody")["orders"] == []


def test_erasure_destroys_the_key_and_the_data_stays_unreadable(url: str, tmp_path: Path) -> None:
    config = config_with(url, tmp_path)
    sale_into(url, config)
    user = shopper_with_orders(config)
    keys = KeyStore.open(config)
    try:
        sealed = [
            str(r[0])
            for r in keys.db.query(
                "SELECT pii_sealed FROM orders WHERE user_id = ? AND pii_sealed IS NOT NULL",
                (user,),
            )
        ]
        others = keys.db.query(
            "SELECT pii_sealed FROM orders WHERE user_id <> ? AND pii_sealed IS NOT NULL LIMIT 1",
            (user,),
        )
        orders_before = keys.db.query("SELECT COUNT(*) FROM orders")
    finally:
        keys.close()

    erased = gdpr_erase(config, user)
    assert erased["user_id"] == user and len(erased["destroyed_key_ids"]) == 1
    assert erased["orders_kept_without_personal_data"] == len(gdpr_export(config, user)["orders"])

    keys = KeyStore.open(config)
    try:
        for text in sealed:  # the very ciphertext still stored in the orders table
            with pytest.raises(KeyErased, match=f"{user}.*erased.*destroyed at"):
                Unsealer(keys).unseal(text)
        # Another shopper is untouched.
        assert Unsealer(keys).unseal(str(others[0][0])).details
        assert keys.db.query("SELECT COUNT(*) FROM orders") == orders_before
        assert keys.db.query("SELECT COUNT(*) FROM data_keys WHERE user_id = ?", (user,)) == [(0,)]
    finally:
        keys.close()

    export = gdpr_export(config, user)
    assert export["data_key"] is None
    assert [e["key_id"] for e in export["erasures"]] == erased["destroyed_key_ids"]
    statuses = {o["personal_details"]["status"] for o in export["orders"]}
    assert statuses <= {"erased", "none"} and "erased" in statuses
    assert "Rue" not in repr(export)


def test_an_erased_key_is_gone_from_the_sqlite_file(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "orders.db")
    config = config_with(url, tmp_path)
    keys = KeyStore.open(config)
    try:
        Sealer(keys).seal("alice", shipping_details("alice"))
        wrapped = bytes(keys.db.query("SELECT wrapped FROM data_keys")[0][0])
    finally:
        keys.close()
    files = [tmp_path / "orders.db", tmp_path / "orders.db-wal"]
    assert any(wrapped in f.read_bytes() for f in files if f.exists())
    gdpr_erase(config, "alice")
    assert not any(wrapped in f.read_bytes() for f in files if f.exists())


def test_a_returning_shopper_gets_a_new_key_and_old_data_stays_erased(
    url: str, tmp_path: Path
) -> None:
    config = config_with(url, tmp_path)
    keys = KeyStore.open(config)
    try:
        old = Sealer(keys).seal("alice", shipping_details("alice"))
        keys.erase("alice")
        new = Sealer(keys).seal("alice", shipping_details("alice"))
        assert old != new
        with pytest.raises(KeyErased):
            Unsealer(keys).unseal(old)
        assert Unsealer(keys).unseal(new).details == shipping_details("alice")
        assert len(keys.erasures("alice")) == 1
        keys.erase("nobody")  # an erasure request for a shopper without data is recorded too
        assert keys.erasures("nobody")[0][0] == ""
    finally:
        keys.close()


def test_rotation_rewraps_every_key_and_keeps_everything_readable(url: str, tmp_path: Path) -> None:
    only_k1 = config_with(url, tmp_path, pii={"master_keys": {"k1": K1}, "active_key": "k1"})
    both = config_with(url, tmp_path, pii={"master_keys": {"k1": K1, "k2": K2}, "active_key": "k2"})
    only_k2 = config_with(url, tmp_path, pii={"master_keys": {"k2": K2}, "active_key": "k2"})
    keys = KeyStore.open(only_k1)
    users = [f"u{i}" for i in range(12)]
    try:
        texts = {u: Sealer(keys).seal(u, shipping_details(u)) for u in users}
    finally:
        keys.close()

    # Without k1, the keys it wraps cannot be opened: the error says which key is missing.
    keys = KeyStore.open(only_k2)
    try:
        with pytest.raises(MasterKeyMissing, match="'k1'"):
            Unsealer(keys).unseal(texts["u0"])
    finally:
        keys.close()

    result = rotate_keys(both)
    assert result == {
        "active_key": "k2",
        "rewrapped": 12,
        "data_keys": 12,
        "by_master_key": {"k2": 12},
    }
    assert rotate_keys(both)["rewrapped"] == 0

    keys = KeyStore.open(only_k2)  # k1 retired from the config
    try:
        for u in users:
            assert Unsealer(keys).unseal(texts[u]).details == shipping_details(u)
    finally:
        keys.close()


def test_rotation_in_pages_covers_every_key(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "orders.db")
    both = config_with(url, tmp_path, pii={"master_keys": {"k1": K1, "k2": K2}, "active_key": "k1"})
    keys = KeyStore.open(both)
    try:
        for i in range(7):
            keys.get_or_create(f"u{i}")
    finally:
        keys.close()
    flipped = config_with(
        url, tmp_path, pii={"master_keys": {"k1": K1, "k2": K2}, "active_key": "k2"}
    )
    keys = KeyStore.open(flipped)
    try:
        assert keys.rotate(page_keys=3).rewrapped == 7
        assert keys.counts_by_master() == {"k2": 7}
    finally:
        keys.close()


def test_many_keys_are_made_in_one_transaction_and_existing_ones_kept(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keystore, "LOOKUP_PAGE_USERS", 3)  # several IN (...) pages
    keys = KeyStore.open(config_with(url, tmp_path))
    try:
        alice = keys.get_or_create("alice")
        transactions = 0
        real = keys.db.transaction

        def counted() -> Any:
            nonlocal transactions
            transactions += 1
            return real()

        monkeypatch.setattr(keys.db, "transaction", counted)
        users = ["alice", *(f"u{i}" for i in range(8)), "u3"]
        made = keys.get_or_create_many(users)
        assert transactions == 1
        assert sorted(made) == sorted(set(users)) and made["alice"] == alice
        for user, key in made.items():
            assert key.user_id == user and keys.current(user) == key
        assert keys.get_or_create_many(users) == made and transactions == 1  # all stored
        assert keys.get_or_create_many([]) == {}
        with pytest.raises(PiiError):
            keys.get_or_create_many(["v1", ""])
        assert keys.current("v1") is None  # a bad id in the group: nothing made
    finally:
        keys.close()


def test_production_mode_refuses_the_development_master_key(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "orders.db")
    # Refused when the config loads (cluster.config), so no process starts with it ...
    with pytest.raises(ConfigError, match="development key, refused in production") as load:
        config_with(url, tmp_path, mode="production")
    assert DEV_MASTER_KEY_B64 not in str(load.value)
    # ... and by the key store too, for a config built without that validation.
    unchecked = dataclasses.replace(config_with(url, tmp_path), mode="production")
    with pytest.raises(PiiConfigError, match="development key, refused in production") as err:
        KeyStore.open(unchecked)
    assert DEV_MASTER_KEY_B64 not in str(err.value)
    real = base64.b64encode(os.urandom(32)).decode()
    keys = KeyStore.open(
        config_with(url, tmp_path, mode="production", pii={"master_keys": {"prod1": real}})
    )
    keys.close()


@pytest.mark.parametrize(
    ("pii", "message"),
    [
        ({"master_keys": {"k1": "not base64!"}}, r"pii\.master_keys\.k1: expected the base64"),
        ({"master_keys": {"k1": base64.b64encode(b"short").decode()}}, "32 random bytes"),
        ({"master_keys": {"k.1": K1}}, "key id 'k.1'"),
        ({"master_keys": {}}, "at least one master key"),
        ({"master_keys": {"k1": K1}, "active_key": "k9"}, "'k9': not one of"),
        ({"master_keys": {"k1": K1, "k2": K2}}, r"pii\.active_key"),
        ({"master_keys": "k1=" + K1 + ",k1=" + K2}, "duplicate pii master key id"),
        ({"master_keys": "k1"}, "expected 'id=base64"),
    ],
)
def test_bad_master_keys_are_refused_without_showing_them(
    pii: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config_with("sqlite:///x.db", tmp_path, pii=pii)
    assert "not base64!" not in str(err.value) and K2 not in str(err.value)


def test_master_keys_come_from_the_environment_and_never_show_in_a_repr(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(
        '[cluster]\nsecret = "' + "s" * 40 + '"\n[[nodes]]\nid = "n1"\n'
        'raft = "127.0.0.1:1"\napi = "127.0.0.1:2"\n'
        '[pii]\nmaster_keys = { dev = "' + DEV_MASTER_KEY_B64 + '" }\nactive_key = "dev"\n'
    )
    env = {"FLASHSALE_PII__MASTER_KEYS": f"k1={K1},k2={K2}", "FLASHSALE_PII__ACTIVE_KEY": "k2"}
    config = load_config(path, env=env)
    assert [k.key_id for k in config.pii.master_keys] == ["k1", "k2"]
    assert config.pii.active.key_id == "k2"
    assert config.pii.active.secret == b"2" * 32
    assert K1 not in repr(config) and repr(b"1" * 32) not in repr(config)


def test_the_shipped_config_uses_the_development_key_in_development() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "cluster.toml", env={})
    assert config.pii.active.is_development_default
    assert config.snapshots.batch_events <= 10_000
