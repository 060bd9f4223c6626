"""The layout of a chaos cluster: its cluster.toml, the proxy links and each node's routes.

Theory of operation: ``build_topology`` picks free loopback ports, writes one
cluster.toml that every process of the run reads (nodes, gateways, the sale's settings),
and plans one proxy link per pair of nodes (the order-snapshot writer, ``python -m
snapshots``, gets a ``[snapshots] listen`` address and a SQLite store in the folder).
pysyncobj connects each pair once, from the node with the greater Raft address (compared
as text) to the other, so the link of the pair ``(a, b)`` listens on a free port and
forwards to the lesser node's Raft address, and the greater node's route sends its
connection there (``chaos.routed_node``). Cutting that one link cuts the pair both ways.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chaos.proxy import LinkSpec
from cluster.config import ClusterConfig, HostPort, load_config

LOOPBACK = "127.0.0.1"
WRITER = "snapshots"  # the process name of the order-snapshot writer
WRITER_FEED_WAIT_MS = 1_000  # its long-poll: short, so a dead node is left soon


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on the loopback (held together while choosing)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True, slots=True)
class Topology:
    directory: Path
    config_path: Path
    config: ClusterConfig
    links: tuple[LinkSpec, ...]
    pairs: Mapping[str, frozenset[str]]  # link name -> the two node ids it joins
    routes: Mapping[str, Mapping[str, str]]  # node id -> {peer raft address: link address}
    proxy_control: HostPort

    @property
    def node_ids(self) -> list[str]:
        return [n.id for n in self.config.nodes]

    @property
    def gateway_ids(self) -> list[str]:
        return [g.id for g in self.config.gateways]

    @property
    def writer_ids(self) -> list[str]:
        """The snapshot writer's process name, when this cluster has one."""
        return [WRITER] if self.config.snapshots.listen is not None else []

    def fsync_delay_path(self, node_id: str) -> Path:
        """The slow-disk control file of ``node_id`` (``chaos.slow_disk``)."""
        return self.directory / "faults" / f"{node_id}.fsync-delay-ms"

    def links_of(self, node_id: str) -> list[str]:
        """Names of the links that carry ``node_id``'s Raft traffic."""
        return [name for name, pair in self.pairs.items() if node_id in pair]

    def links_between(self, side_a: set[str], side_b: set[str]) -> list[str]:
        """Names of the links joining a node of ``side_a`` to a node of ``side_b``."""
        return [
            name
            for name, pair in self.pairs.items()
            if len(pair & side_a) == 1 and len(pair & side_b) == 1
        ]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def build_topology(
    directory: Path,
    *,
    n_nodes: int = 3,
    n_gateways: int = 2,
    raft: Mapping[str, int] | None = None,
    ledger: Mapping[str, int] | None = None,
    gateway: Mapping[str, int] | None = None,
    durability: str = "fsync",
) -> Topology:
    """Write ``directory``/cluster.toml and plan the proxy links; nothing is started."""
    if n_nodes < 1 or n_gateways < 1:
        raise ValueError("a chaos cluster needs at least one node and one gateway")
    directory.mkdir(parents=True, exist_ok=True)
    n_pairs = n_nodes * (n_nodes - 1) // 2
    ports = iter(free_ports(2 * n_nodes + n_gateways + n_pairs + 3))
    raft_addr = {f"n{i + 1}": f"{LOOPBACK}:{next(ports)}" for i in range(n_nodes)}
    lines = [
        "[cluster]",
        'name = "chaos"',
        f"data_dir = {_toml(directory / 'data')}",
        f"secret = {_toml('chaos-' + secrets.token_hex(20))}",
        'mode = "development"',
        f"durability = {_toml(durability)}",
        "",
        "[raft]",
        *(f"{k} = {_toml(v)}" for k, v in (raft or {}).items()),
        "",
        "[ledger]",
        *(f"{k} = {_toml(v)}" for k, v in (ledger or {}).items()),
        "",
        "[gateway]",
        *(f"{k} = {_toml(v)}" for k, v in (gateway or {}).items()),
        "",
        # The workload's shoppers are trusted clients of ours: the bot defences would only
        # measure themselves here (docs/BOTS.md has the runs with them on).
        "[bots]",
        "enabled = false",
        "",
    ]
    for node_id, address in raft_addr.items():
        lines += [
            "[[nodes]]",
            f'id = "{node_id}"',
            f'raft = "{address}"',
            f'api = "{LOOPBACK}:{next(ports)}"',
            "",
        ]
    for j in range(n_gateways):
        lines += ["[[gateways]]", f'id = "g{j + 1}"', f'listen = "{LOOPBACK}:{next(ports)}"', ""]
    lines += [
        "[admin]",
        f'listen = "{LOOPBACK}:{next(ports)}"',
        "",
        "[storage]",
        f"url = {_toml('sqlite:///' + str(directory / 'orders.db'))}",
        "",
        "[snapshots]",
        f'listen = "{LOOPBACK}:{next(ports)}"',
        f"feed_wait_ms = {WRITER_FEED_WAIT_MS}",
        "",
    ]
    config_path = directory / "cluster.toml"
    config_path.write_text("\n".join(lines), encoding="utf-8")
    config = load_config(config_path, env={})

    links: list[LinkSpec] = []
    pairs: dict[str, frozenset[str]] = {}
    routes: dict[str, dict[str, str]] = {n: {} for n in raft_addr}
    ids = list(raft_addr)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            # pysyncobj: the node whose address is greater (as text) opens the connection.
            dialer, listener = (a, b) if raft_addr[a] > raft_addr[b] else (b, a)
            listen = HostPort(LOOPBACK, next(ports))
            target = config.node(listener).raft
            name = f"{dialer}-{listener}"
            links.append(LinkSpec(name, listen, target))
            pairs[name] = frozenset((a, b))
            routes[dialer][str(target)] = str(listen)
    (directory / "links.json").write_text(
        json.dumps([lk.to_json() for lk in links], indent=2), encoding="utf-8"
    )
    return Topology(
        directory=directory,
        config_path=config_path,
        config=config,
        links=tuple(links),
        pairs=pairs,
        routes=routes,
        proxy_control=HostPort(LOOPBACK, next(ports)),
    )
