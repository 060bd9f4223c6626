"""Sealing personal data: what goes in comes out for the right key only; anything altered,
moved to another shopper or under another key is refused; the text format parses."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.limits import MAX_TEXT_LEN
from pii import gateway as pii_gateway
from pii.aead import DataKey, new_data_key_secret, new_key_id
from pii.envelope import Sealed, is_sealed, key_id_of, parse
from pii.errors import KeyNotFound, MalformedSealed, TamperedError
from pii.keystore import KeyStore
from pii.sealing import (
    MAX_CACHED_DATA_KEYS,
    DetailsTooLarge,
    Sealer,
    Unsealer,
    open_with,
    seal_with,
)
from tests.support.stores import STORE_KINDS, config_with, store_url

DETAILS: dict[str, Any] = {
    "shipping_address": {
        "address_line1": "12 Rue des Lilas",
        "city": "Lyon",
        "postal_code": "69003",
        "country": "FR",
    },
    "email": "alice@example.org",
    "phone": "+33 6 12 34 56 78",
}


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as u:
        yield u


@pytest.fixture
def keys(url: str, tmp_path: Path) -> Iterator[KeyStore]:
    store = KeyStore.open(config_with(url, tmp_path))
    try:
        yield store
    finally:
        store.close()


def a_key(user_id: str = "alice") -> DataKey:
    return DataKey(user_id, new_key_id(), new_data_key_secret())


def flip(text: str, position: int) -> str:
    """``text`` with one payload byte changed (the base64 re-encoded, so it still parses)."""
    sealed = parse(text)
    payload = bytearray(sealed.payload)
    payload[position] ^= 0x01
    return Sealed(sealed.key_id, sealed.user_id, bytes(payload)).text()


def test_sealed_details_open_with_the_shoppers_key(keys: KeyStore) -> None:
    sealer = Sealer(keys)
    text = sealer.seal("alice", DETAILS)
    assert is_sealed(text)
    for secret in ("Lilas", "Lyon", "69003", "alice@example.org", "+33"):
        assert secret not in text
    opened = Unsealer(keys).unseal(text)
    assert opened.user_id == "alice"
    assert opened.details == DETAILS
    assert opened.key_id == key_id_of(text) == keys.current("alice").key_id  # type: ignore[union-attr]


def test_sealing_is_deterministic_so_a_retried_checkout_is_the_same_command() -> None:
    key = a_key()
    reordered = dict(reversed(list(DETAILS.items())))
    assert seal_with(key, DETAILS) == seal_with(key, reordered)
    other = {**DETAILS, "email": "bob@example.org"}
    assert seal_with(key, DETAILS) != seal_with(key, other)


@pytest.mark.parametrize("position", [0, 11, 12, 20, -1])  # nonce, ciphertext, tag
def test_a_changed_byte_anywhere_is_detected(position: int) -> None:
    key = a_key()
    text = seal_with(key, DETAILS)
    with pytest.raises(TamperedError, match="does not authenticate"):
        open_with(key, parse(flip(text, position)))


def test_a_value_moved_to_another_shopper_does_not_open(keys: KeyStore) -> None:
    sealer = Sealer(keys)
    alice = sealer.seal("alice", DETAILS)
    sealer.seal("mallory", {"email": "m@example.org"})
    alice_key = keys.current("alice")
    assert alice_key is not None
    # The same ciphertext relabelled as mallory's, under alice's key id: the user id is
    # bound into the authentication, so it fails even with the right key bytes.
    moved = Sealed(alice_key.key_id, "mallory", parse(alice).payload)
    with pytest.raises(TamperedError):
        open_with(DataKey("mallory", alice_key.key_id, alice_key.secret), moved)
    # And the store refuses to hand out alice's key for mallory at all.
    with pytest.raises(KeyNotFound, match="mallory"):
        Unsealer(keys).unseal(moved.text())


def test_a_value_under_another_key_id_does_not_open() -> None:
    key = a_key()
    text = seal_with(key, DETAILS)
    relabelled = DataKey(key.user_id, new_key_id(), key.secret)
    with pytest.raises(MalformedSealed, match="is not for key"):
        open_with(relabelled, parse(text))
    sealed = parse(text)
    with pytest.raises(TamperedError):
        open_with(relabelled, Sealed(relabelled.key_id, sealed.user_id, sealed.payload))


def test_a_wrapped_key_altered_in_the_store_is_detected(keys: KeyStore) -> None:
    text = Sealer(keys).seal("alice", DETAILS)
    wrapped = bytearray(keys.db.query("SELECT wrapped FROM data_keys")[0][0])
    wrapped[-1] ^= 0x80
    with keys.db.transaction() as tx:
        tx.execute("UPDATE data_keys SET wrapped = ? WHERE user_id = 'alice'", (bytes(wrapped),))
    with pytest.raises(TamperedError, match="wrapped data key"):
        Unsealer(keys).unseal(text)


def test_a_wrapped_key_copied_to_another_shopper_does_not_open(keys: KeyStore) -> None:
    sealer = Sealer(keys)
    sealer.seal("alice", DETAILS)
    sealer.seal("bob", DETAILS)
    with keys.db.transaction() as tx:
        tx.execute(
            "UPDATE data_keys SET wrapped = (SELECT wrapped FROM data_keys WHERE user_id = "
            "'alice') WHERE user_id = 'bob'"
        )
    with pytest.raises(TamperedError, match="'bob'"):
        keys.current("bob")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ('{"format":"json/v1"}', "not a sealed value"),
        ("v1.dkzz.alice.AAAA", "v1.<key_id>.<user_id>.<payload>"),
        ("v1.dk0123456789abcdef..AAAA", "v1.<key_id>.<user_id>.<payload>"),
        ("v1.dk0123456789abcdef.alice.!!!", "not base64url"),
        ("v1.dk0123456789abcdef.alice.AAAA", "too short"),
    ],
)
def test_malformed_sealed_values_are_named(text: str, message: str) -> None:
    with pytest.raises(MalformedSealed, match=message.replace(".", r"\.")):
        parse(text)


def test_user_ids_with_dots_parse() -> None:
    key = a_key("first.last@shop.example")
    text = seal_with(key, DETAILS)
    sealed = parse(text)
    assert (sealed.user_id, sealed.key_id) == ("first.last@shop.example", key.key_id)
    assert open_with(key, sealed) == DETAILS


def test_details_beyond_the_ledgers_text_limit_are_refused() -> None:
    key = a_key()
    fits = {"note": "x" * 2000}
    assert len(seal_with(key, fits)) <= MAX_TEXT_LEN
    with pytest.raises(DetailsTooLarge, match=str(MAX_TEXT_LEN)):
        seal_with(key, {"note": "x" * MAX_TEXT_LEN})


def test_the_sealer_reads_the_store_once_per_shopper_while_cached(keys: KeyStore) -> None:
    now = [0.0]
    sealer = Sealer(keys, ttl_s=60, capacity=2, clock=lambda: now[0])
    sealer.seal("alice", DETAILS)
    sealer.seal("alice", DETAILS)
    assert sealer.lookups == 1
    now[0] = 61.0  # past the TTL: the key is read again (an erasure would show now)
    sealer.seal("alice", DETAILS)
    assert sealer.lookups == 2
    sealer.seal("bob", DETAILS)
    sealer.seal("carol", DETAILS)  # capacity 2: alice, the oldest, is dropped
    assert len(sealer) == 2
    sealer.seal("alice", DETAILS)
    assert sealer.lookups == 5
    assert MAX_CACHED_DATA_KEYS >= 10_000
    with pytest.raises(ValueError, match="capacity"):
        Sealer(keys, capacity=0)


def test_gateways_racing_on_a_first_checkout_share_one_key(
    url: str, keys: KeyStore, tmp_path: Path
) -> None:
    stores = [KeyStore.open(config_with(url, tmp_path)) for _ in range(4)]
    texts: list[str] = []
    barrier = threading.Barrier(len(stores))

    def checkout(store: KeyStore) -> None:
        barrier.wait()
        texts.append(Sealer(store).seal("newcomer", DETAILS))

    threads = [threading.Thread(target=checkout, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert len(texts) == 4 and len(set(texts)) == 1
    assert keys.db.query("SELECT COUNT(*) FROM data_keys WHERE user_id = 'newcomer'") == [(1,)]


def test_the_store_never_holds_a_data_key_in_clear(keys: KeyStore) -> None:
    Sealer(keys).seal("alice", DETAILS)
    key = keys.current("alice")
    assert key is not None
    stored = repr(keys.db.query("SELECT * FROM data_keys"))
    assert key.secret.hex() not in stored
    assert repr(key.secret) not in stored
    assert base64.b64encode(key.secret).decode() not in stored
    assert "secret" not in repr(key)


def test_the_gateway_refuses_to_seal_before_a_sealer_is_installed(tmp_path: Path) -> None:
    pii_gateway.uninstall_sealer()
    with pytest.raises(pii_gateway.SealerNotInstalled, match="install_sealer"):
        pii_gateway.seal_details("alice", DETAILS)
    config = config_with("sqlite:///" + str(tmp_path / "gw.db"), tmp_path)
    pii_gateway.install_sealer(config)
    try:
        from gateway.pii import seal_details

        text = seal_details("alice", DETAILS)
        assert is_sealed(text) and "Lilas" not in text
        keys = KeyStore.open(config)
        try:
            assert Unsealer(keys).unseal(text).details == DETAILS
        finally:
            keys.close()
    finally:
        pii_gateway.uninstall_sealer()
