"""Shopper tokens and user-scoped idempotency keys (gateway.identity, gateway.idempotency)."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.idempotency import (
    MAX_CLIENT_KEY_LEN,
    ledger_key,
    new_client_key,
    valid_client_key,
)
from gateway.identity import (
    MAX_TOKEN_LEN,
    MAX_USER_ID_LEN,
    InvalidToken,
    bearer_user,
    issue_token,
    verify_token,
)
from ledger.limits import MAX_ID_LEN

SECRET = "test-secret"
NOW = 1_700_000_000.0


def test_a_token_proves_its_user_until_it_expires() -> None:
    token = issue_token(SECRET, "alice", 60, now_s=NOW)
    assert verify_token(SECRET, token, now_s=NOW) == "alice"
    assert verify_token(SECRET, token, now_s=NOW + 59) == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, now_s=NOW + 60)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = issue_token("other-secret", "alice", 60, now_s=NOW)
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(SECRET, token, now_s=NOW)


def test_changing_the_user_inside_a_token_breaks_its_signature() -> None:
    token = issue_token(SECRET, "alice", 60, now_s=NOW)
    version, _payload, signature = token.split(".")
    forged_payload = base64.urlsafe_b64encode(
        json.dumps({"sub": "bob", "exp": int(NOW) + 60}).encode()
    ).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        verify_token(SECRET, f"{version}.{forged_payload}.{signature}", now_s=NOW)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "v1.x", "v2.a.b", "v1..", "v1.a.b.c", "x" * (MAX_TOKEN_LEN + 1),
     "v1.abc.\u00e9", "v1.\u00e9bc.abc"],  # non-ASCII: refused, not a TypeError (a 500)
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, token, now_s=NOW)


@pytest.mark.parametrize(
    "header", [None, "", "Basic abc", "Bearer", "Bearer   ", "Token " + "a.b.c"]
)
def test_the_authorization_header_must_carry_a_bearer_token(header: str | None) -> None:
    with pytest.raises(InvalidToken):
        bearer_user(SECRET, header, now_s=NOW)


def test_bearer_header_gives_the_user() -> None:
    token = issue_token(SECRET, "u-1@shop", 60, now_s=NOW)
    assert bearer_user(SECRET, f"Bearer {token}", now_s=NOW) == "u-1@shop"


@pytest.mark.parametrize(
    "user_id", ["", "a:b", "a#b", "a b", "-lead", "x" * (MAX_USER_ID_LEN + 1), "é"]
)
def test_user_ids_that_could_confuse_idempotency_keys_are_refused(user_id: str) -> None:
    with pytest.raises(ValueError, match="user id"):
        issue_token(SECRET, user_id, 60)


@pytest.mark.parametrize("ttl_s", [0, -1, 10**9])
def test_token_lifetime_is_bounded(ttl_s: int) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        issue_token(SECRET, "alice", ttl_s)


def test_two_users_with_the_same_client_key_get_different_ledger_keys() -> None:
    assert ledger_key("alice", "k1") != ledger_key("bob", "k1")
    assert ledger_key("alice", "k1") == ledger_key("alice", "k1")
    assert ledger_key("alice", "k1") == "alice:k1"


def test_long_keys_are_hashed_within_the_ledger_id_limit_without_collisions() -> None:
    user = "u" * MAX_USER_ID_LEN
    long_a, long_b = "a" * MAX_CLIENT_KEY_LEN, "a" * (MAX_CLIENT_KEY_LEN - 1) + "b"
    keys = {ledger_key(user, long_a), ledger_key(user, long_b), ledger_key("u", long_a)}
    assert len(keys) == 3
    assert all(len(k) <= MAX_ID_LEN for k in keys)
    # The plain and hashed forms differ in their separator, so they cannot meet.
    assert ledger_key(user, long_a).startswith(user + "#")


def test_client_key_validation() -> None:
    assert valid_client_key("order-2024-01-01T10:00:00Z#1")
    assert valid_client_key("k" * MAX_CLIENT_KEY_LEN)
    assert not valid_client_key("k" * (MAX_CLIENT_KEY_LEN + 1))
    assert not valid_client_key("")
    assert not valid_client_key("has space")
    assert not valid_client_key("ünïcode")
    assert valid_client_key(new_client_key())
    assert new_client_key() != new_client_key()


def test_a_verified_token_is_remembered_only_for_its_own_secret_and_signature() -> None:
    token = issue_token(SECRET, "alice", 60, now_s=NOW)
    assert verify_token(SECRET, token, now_s=NOW) == "alice"  # now remembered
    with pytest.raises(InvalidToken, match="signature"):
        verify_token("other-secret", token, now_s=NOW)
    version, payload, signature = token.split(".")
    other = "A" if signature[0] != "A" else "B"
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(SECRET, f"{version}.{payload}.{other}{signature[1:]}", now_s=NOW)
    assert verify_token(SECRET, token, now_s=NOW + 1) == "alice"
