"""Clients are keyed by address for limits and heuristics: an IPv6 subscriber by its /64."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from bots.addresses import client_key


def test_ipv4_is_its_own_key_and_a_mapped_address_is_its_ipv4() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_not_an_address_is_its_own_key() -> None:
    assert client_key("unknown") == "unknown"
    assert client_key("") == ""


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_addresses_of_one_ipv6_64_share_a_key_and_others_do_not(a: int, b: int) -> None:
    """A client rotating through its /64 keeps one bucket and counts as one address."""
    base = int(ipaddress.IPv6Address("2001:db8:1:2::"))
    one = str(ipaddress.IPv6Address(base + a))
    other = str(ipaddress.IPv6Address(base + b))
    assert client_key(one) == client_key(other) == "2001:db8:1:2::/64"
    neighbour = str(ipaddress.IPv6Address(base + (1 << 64) + a))
    assert client_key(neighbour) != client_key(one)
