"""``python -m chaos.routed_node --config PATH NODE_ID``: a real node whose Raft
connections to its peers go through the chaos proxies.

Theory of operation: pysyncobj names every node by its Raft address, uses that name in
its handshake and stores the cluster's names in every dump, which a follower that
installs the leader's snapshot adopts. Handing each node a config in which its peers'
addresses are proxy addresses would therefore give the nodes different names for one
another, and break the cluster the first time a snapshot is installed. Instead every
node keeps the one shared cluster.toml (the same names everywhere) and only the TCP
``connect`` of pysyncobj is redirected: a connection to a peer's Raft address listed in
``CHAOS_RAFT_ROUTES`` (a JSON object ``{"host:port": "proxy-host:proxy-port"}``) goes to
the proxy instead, which forwards it to the peer. This is what a routing rule would do,
done in userspace; everything else is the unmodified ``python -m node`` (plus, when
``CHAOS_FSYNC_DELAY_FILE`` is set, the slow-disk switch of ``chaos.slow_disk``, and under
libfaketime the ``time.sleep`` of ``chaos.clock.patch_sleep``).

pysyncobj opens one connection per pair of nodes, from the node with the greater address
to the other, so routing each node's outgoing connections is enough for every pair to
cross exactly one proxy link.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pysyncobj import tcp_connection

from chaos.clock import patch_sleep
from chaos.slow_disk import FSYNC_DELAY_ENV, install_fsync_delay
from cluster.supervisor import die_with_parent
from node.__main__ import run

ROUTES_ENV = "CHAOS_RAFT_ROUTES"


def parse_routes(text: str) -> dict[str, tuple[str, int]]:
    """``{"127.0.0.1:7001": "127.0.0.1:41001"}`` -> ``{"127.0.0.1:7001": ("127.0.0.1", 41001)}``."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{ROUTES_ENV}: expected a JSON object")
    routes: dict[str, tuple[str, int]] = {}
    for peer, via in value.items():
        if not isinstance(via, str) or ":" not in via:
            raise ValueError(f"{ROUTES_ENV}: {peer!r} -> {via!r}: expected 'host:port'")
        host, _, port = via.rpartition(":")
        routes[str(peer)] = (host, int(port))
    return routes


def install_routes(routes: Mapping[str, tuple[str, int]]) -> None:
    """Redirect pysyncobj's outgoing TCP connections to the addresses in ``routes``."""
    original = tcp_connection.TcpConnection.connect

    def connect(self: Any, host: str, port: int) -> Any:
        via = routes.get(f"{host}:{port}")
        if via is not None:
            host, port = via
        return original(self, host, port)

    tcp_connection.TcpConnection.connect = connect


def main() -> int:
    die_with_parent()  # started by a chaos run: never outlive it
    patch_sleep()  # a clock skew: time.sleep under libfaketime (chaos.clock)
    install_routes(parse_routes(os.environ.get(ROUTES_ENV, "{}")))
    delay_file = os.environ.get(FSYNC_DELAY_ENV)
    if delay_file:
        install_fsync_delay(Path(delay_file))  # the nemesis's slow disk (chaos.slow_disk)
    return run()


if __name__ == "__main__":
    sys.exit(main())
