"""The shopper's address behind a trusted proxy: X-Forwarded-For, read only as far as the
proxies the operator named (``[gateway] trusted_proxies``).

Theory of operation: the bot defences key clients by address (gateway.defences: lists,
per-IP rate limits, heuristics, which gateway.admission also feeds). Behind an HTTP load
balancer every connection comes from the balancer, so every shopper would share one
address: one rate-limit bucket for the whole sale. The balancer says who its client was
by appending that address to X-Forwarded-For (HAProxy's ``option forwardfor``), but
anyone can send the header, so it is believed only from a peer in ``trusted_proxies``,
and only from the right: walking the list from its end, each address is the client of
the hop after it, as long as that hop is a trusted proxy. The first address that is not
a trusted proxy is the shopper; anything left of it was written by the shopper and is
ignored. An entry that is not an address stops the walk at the proxy that passed it on,
so a forged header can never choose its own bucket. With no trusted proxy configured
(the default) nothing changes: the address is the connection's peer.

``client_address`` is the decision, pure; ``ForwardedGuard`` the shell (a front-door
guard that hands the handlers a request whose ``remote`` is the shopper's address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

from cluster.config import IPNetwork as Network
from gateway.front_door import Handler

HEADER = "X-Forwarded-For"
MAX_HOPS = 16  # entries read from the right at most; a longer chain stops there


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """The shopper's address for a request from ``peer`` carrying ``forwarded_for`` (the
    X-Forwarded-For values, comma-separated, several headers joined by commas). Pure."""
    if peer is None or not forwarded_for or not _trusted(peer, trusted):
        return peer
    address = peer
    for hop, entry in enumerate(reversed(forwarded_for.split(","))):
        if hop >= MAX_HOPS or not _trusted(address, trusted):
            break
        candidate = entry.strip()
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            break  # not an address: the proxy that passed it on is all we know
        address = candidate
    return address


class ForwardedGuard:
    """A front-door guard: the handlers see ``request.remote`` as ``client_address``."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        forwarded = ",".join(request.headers.getall(HEADER, ()))
        address = client_address(request.remote, forwarded, self.trusted)
        if address is None or address == request.remote:
            return await handler(request)
        return await handler(request.clone(remote=address))
