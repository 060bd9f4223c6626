"""The shopper's address behind a trusted proxy (gateway/forwarded.py): X-Forwarded-For
believed only from ``[gateway] trusted_proxies`` and only from the right, checked as a
table, as a property, in the config, and on the real gateway's per-IP rate limit."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import ClusterConfig, ConfigError, build_config, load_config
from gateway.forwarded import MAX_HOPS, client_address
from tests.support.bots import ONLY_LIMITS, SECRET, Gateway, cluster_name, delete_keys

LB = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # No header, or a peer that is not a trusted proxy: the peer, whatever it sends.
        ("10.0.0.1", None, "10.0.0.1"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        # The balancer appended its client.
        ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
        # What the shopper wrote left of it is ignored.
        ("10.0.0.1", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        # Two trusted hops: the first untrusted address from the right.
        ("10.0.0.1", "1.2.3.4, 198.51.100.1, 10.0.0.7", "198.51.100.1"),
        # Garbage from the right stops at the proxy that passed it on.
        ("10.0.0.1", "not-an-address", "10.0.0.1"),
        ("10.0.0.1", "198.51.100.1, 10.0.0.7, unknown", "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        # IPv6.
        ("fd00::1", "2001:db8::5", "2001:db8::5"),
        # A chain of trusted proxies only: the leftmost address read.
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
    ],
)
def test_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    assert client_address(peer, forwarded, LB) == expected


def test_nothing_is_believed_without_trusted_proxies() -> None:
    assert client_address("127.0.0.1", "198.51.100.1", ()) == "127.0.0.1"
    assert client_address(None, "198.51.100.1", LB) is None


def test_a_long_chain_is_read_at_most_max_hops_from_the_right() -> None:
    chain = ", ".join(f"10.1.0.{i}" for i in range(MAX_HOPS + 5))
    assert client_address("10.0.0.1", chain, LB) == f"10.1.0.{5}"


_address = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["10.0.0.1", "10.9.9.9", "fd00::2", "garbage", "", " "]),
)


@given(peer=_address, entries=st.lists(_address, max_size=6))
def test_the_answer_is_never_left_of_the_first_untrusted_hop(peer: str, entries: list[str]) -> None:
    got = client_address(peer, ",".join(entries), LB)
    hops = [peer, *reversed([e.strip() for e in entries])]
    # Walk as a proxy-aware reader must: stop after the first address that is not a
    # trusted proxy, or before the first entry that is not an address.
    allowed = []
    for hop in hops:
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            break
        allowed.append(hop)
        if not any(ip in net for net in LB):
            break
    assert got == (allowed[-1] if allowed else peer)


def _config(tmp_path: Path, trusted: list[str], name: str) -> ClusterConfig:
    return build_config(
        {
            "cluster": {"secret": SECRET, "name": name},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [{"id": "g1", "listen": "127.0.0.1:3"}],
            "gateway": {"feed_wait_ms": 100, "trusted_proxies": trusted},
            "bots": {**ONLY_LIMITS, "ip_rate": 0.01, "ip_burst": 2},
        },
        tmp_path,
    )


def test_the_config_takes_addresses_and_networks_and_refuses_anything_else(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, ["127.0.0.1", "10.0.0.0/8", "fd00::/8"], "c")
    assert config.gateway_settings.trusted_proxies == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    with pytest.raises(ConfigError, match=r"'proxy\.example' is not an IP address or network"):
        _config(tmp_path, ["proxy.example"], "c")
    with pytest.raises(ConfigError, match="expected a list"):
        build_config(
            {
                "cluster": {"secret": SECRET},
                "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
                "gateway": {"trusted_proxies": 7},
            },
            tmp_path,
        )


def test_an_environment_override_is_a_comma_separated_list(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[cluster]\nsecret = "{SECRET}"\n'
        '[[nodes]]\nid = "n1"\nraft = "127.0.0.1:1"\napi = "127.0.0.1:2"\n'
    )
    config = load_config(path, env={"FLASHSALE_GATEWAY__TRUSTED_PROXIES": "10.0.0.1, 10.2.0.0/16"})
    assert config.gateway_settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("10.2.0.0/16"),
    )


@pytest.fixture
async def names() -> AsyncIterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        await delete_keys(name)


async def _statuses(gw: Gateway, forwarded: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        resp = await gw.client.get("/products", headers={"X-Forwarded-For": forwarded})
        out.append(resp.status)
    return out


async def test_behind_a_trusted_proxy_each_shopper_has_an_ip_bucket_of_their_own(
    tmp_path: Path, names: list[str]
) -> None:
    names.append(cluster_name())
    gw = await Gateway.start(_config(tmp_path, ["127.0.0.1"], names[-1]))
    try:
        assert await _statuses(gw, "198.51.100.1", 3) == [200, 200, 429]
        # Another shopper behind the same proxy is not limited by the first one.
        assert await _statuses(gw, "198.51.100.2", 2) == [200, 200]
        # A forged address left of the proxy's entry changes nothing.
        assert await _statuses(gw, "203.0.113.7, 198.51.100.1", 1) == [429]
    finally:
        await gw.close()


async def test_without_trust_every_shopper_behind_the_proxy_shares_its_bucket(
    tmp_path: Path, names: list[str]
) -> None:
    names.append(cluster_name())
    gw = await Gateway.start(_config(tmp_path, [], names[-1]))
    try:
        assert await _statuses(gw, "198.51.100.1", 2) == [200, 200]
        # The header is not believed: a "different" shopper meets the same bucket.
        assert await _statuses(gw, "198.51.100.2", 1) == [429]
    finally:
        await gw.close()
