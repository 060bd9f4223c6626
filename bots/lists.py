"""Operators' block and allow lists: IP addresses or networks (CIDR) and shoppers.

The entries live in the policy (``BotPolicy.lists``, insertion-ordered); ``BotLists``
keeps them and an index for matching. An IP is matched against the networks of every
prefix length present (a set lookup per length), so a full list of 10 000 networks costs
at most 33 (IPv4) or 129 (IPv6) lookups, not 10 000 comparisons. Each list holds at
most ``max_entries``; adding to a full list is refused (``ListFull``), never silently
dropping an older entry an operator relies on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from bots.policy import LISTS, BotPolicy
from gateway.identity import valid_user_id

IP_LISTS = ("block_ips", "allow_ips")
SHOPPER_LISTS = ("block_shoppers", "allow_shoppers")
MAX_VALUE_LEN = 64  # an IPv6 network with its prefix fits in 43 characters

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ListFull(ValueError):
    """The list already holds its maximum number of entries."""


def normalize(list_name: str, value: str) -> str:
    """The canonical form of an entry of ``list_name``; ValueError when it is not one.

    A single address is kept without a prefix ("10.0.0.1"), a network in its canonical
    form with host bits cleared ("10.0.0.0/8" for "10.1.2.3/8").
    """
    if list_name not in LISTS:
        raise ValueError(f"unknown list {list_name!r}: expected one of {list(LISTS)}")
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE_LEN:
        raise ValueError(f"value: expected 1..{MAX_VALUE_LEN} characters")
    if list_name in SHOPPER_LISTS:
        if not valid_user_id(value):
            raise ValueError(f"{value!r} is not a shopper id")
        return value
    try:
        return canonical_ip(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or network (CIDR)") from None


def canonical_ip(text: str) -> str:
    """An IP address or network in the one form lists keep; ValueError when it is
    neither. An IPv4-mapped IPv6 entry (``::ffff:10.0.0.1``, what a dual-stack gateway
    logs) is kept as IPv4, the form a client's address is looked up in: kept as IPv6 it
    would match nobody."""
    network: Network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _key(network: Network) -> tuple[int, int, int]:
    shift = network.max_prefixlen - network.prefixlen
    return network.version, network.prefixlen, int(network.network_address) >> shift


class IpIndex:
    """Membership of an address in a set of networks, one lookup per prefix length."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._keys: set[tuple[int, int, int]] = set()
        self._lengths: dict[int, set[int]] = {4: set(), 6: set()}
        for entry in entries:
            network = ipaddress.ip_network(entry, strict=False)
            self._keys.add(_key(network))
            self._lengths[network.version].add(network.prefixlen)

    def __contains__(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        value, width = int(address), address.max_prefixlen
        return any(
            (address.version, length, value >> (width - length)) in self._keys
            for length in self._lengths[address.version]
        )


class BotLists:
    """The four lists of a policy, with their indexes; every change goes through here."""

    def __init__(self, policy: BotPolicy, max_entries: int) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self._ips = {name: IpIndex(policy.lists[name]) for name in IP_LISTS}

    def add(self, list_name: str, value: str) -> str:
        """Add ``value`` (normalized, returned); adding an entry twice is fine."""
        entry = normalize(list_name, value)
        entries = self.policy.lists[list_name]
        if entry not in entries:
            if len(entries) >= self.max_entries:
                raise ListFull(f"{list_name} holds {self.max_entries} entries (the maximum)")
            entries[entry] = None
            self._reindex(list_name)
        return entry

    def remove(self, list_name: str, value: str) -> str:
        """Remove ``value`` (normalized, returned); removing a missing entry is fine."""
        entry = normalize(list_name, value)
        entries = self.policy.lists[list_name]
        if entry in entries:
            del entries[entry]
            self._reindex(list_name)
        return entry

    def replace(self, list_name: str, values: Iterable[str]) -> None:
        """Set a whole list (from the shared store); invalid entries are skipped."""
        entries: dict[str, None] = {}
        for value in values:
            if len(entries) >= self.max_entries:
                break
            try:
                entries[normalize(list_name, value)] = None
            except ValueError:
                continue
        if entries != self.policy.lists[list_name]:
            self.policy.lists[list_name] = entries
            self._reindex(list_name)

    def _reindex(self, list_name: str) -> None:
        if list_name in IP_LISTS:
            self._ips[list_name] = IpIndex(self.policy.lists[list_name])

    def blocked(self, ip: str, shopper: str | None) -> bool:
        """True when the IP (or a network holding it) or the shopper is block-listed."""
        return ip in self._ips["block_ips"] or (
            shopper is not None and shopper in self.policy.lists["block_shoppers"]
        )

    def allowed(self, ip: str, shopper: str | None) -> bool:
        """True when the IP (or a network holding it) or the shopper is allow-listed."""
        return ip in self._ips["allow_ips"] or (
            shopper is not None and shopper in self.policy.lists["allow_shoppers"]
        )
