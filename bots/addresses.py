"""The key a client's rate limits and heuristics are kept under, from its address.

An IPv4 address is one client's (or one NAT's). An IPv6 subscriber gets a whole /64 and
can take a new address from it for every request: keyed by full address, such a client
would get a fresh bucket each time and count as a new "IP" for the many-accounts signal,
while its churn evicted other clients' state. So IPv6 clients are keyed by their /64;
an IPv4-mapped IPv6 address (a dual-stack listener) is its IPv4 address. Block and allow
lists match the full address against their networks (bots.lists), not this key.
"""

from __future__ import annotations

import functools
import ipaddress

IPV6_CLIENT_PREFIX = 64  # one subscriber's allocation (RFC 6177 recommends at least /64)


@functools.lru_cache(maxsize=4096)
def client_key(remote: str) -> str:
    """``remote``'s key: the IPv4 address, or the /64 of an IPv6 one; text that is not an
    address (a Unix socket's peer, "unknown") is its own key."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)
