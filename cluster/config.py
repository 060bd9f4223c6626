"""cluster.toml, parsed once into frozen dataclasses and validated eagerly.

Theory of operation: ``load_config(path)`` reads the TOML file, applies environment
overrides (``FLASHSALE_<SECTION>__<KEY>``, and ``FLASHSALE_NODES__<ID>__<KEY>`` /
``FLASHSALE_GATEWAYS__<ID>__<KEY>`` for one entry of a list), then builds and validates
a ``ClusterConfig``. Every error names the offending key and value. Relative paths
(``data_dir``, ``sqlite:///relative.db``) are resolved against the config file's folder.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEV_SECRET = "dev-insecure-change-me"
ENV_PREFIX = "FLASHSALE_"


class ConfigError(ValueError):
    """cluster.toml (or an override) is invalid; the message names key and value."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    raft: HostPort
    api: HostPort


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    id: str
    listen: HostPort


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: HostPort


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")

    @property
    def sqlite_path(self) -> Path:
        """The database file of a ``sqlite:///path`` URL."""
        if not self.is_sqlite:
            raise ConfigError(f"storage.url={self.url!r} is not a sqlite URL")
        return Path(self.url.removeprefix("sqlite:///"))


@dataclass(frozen=True, slots=True)
class RaftConfig:
    append_entries_period_ms: int = 30
    election_timeout_min_ms: int = 300
    election_timeout_max_ms: int = 600
    commit_timeout_ms: int = 5000
    expire_period_ms: int = 250
    feed_retention_events: int = 200_000
    log_compaction_entries: int = 50_000


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    payment_ttl_s: int = 600
    retention_s: int = 3600


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    data_dir: Path
    secret: str
    mode: str
    durability: str
    nodes: tuple[NodeConfig, ...]
    gateways: tuple[GatewayConfig, ...]
    admin: AdminConfig
    storage: StorageConfig
    raft: RaftConfig = field(default_factory=RaftConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    path: Path | None = None  # the file it was read from

    def node(self, node_id: str) -> NodeConfig:
        """The node with this id; ConfigError if there is none."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise ConfigError(f"no node {node_id!r} in config (have {[n.id for n in self.nodes]})")

    def gateway(self, gateway_id: str) -> GatewayConfig:
        """The gateway with this id; ConfigError if there is none."""
        for g in self.gateways:
            if g.id == gateway_id:
                return g
        raise ConfigError(
            f"no gateway {gateway_id!r} in config (have {[g.id for g in self.gateways]})"
        )

    def node_data_dir(self, node_id: str) -> Path:
        return self.data_dir / "nodes" / node_id


def parse_hostport(value: object, key: str) -> HostPort:
    """Parse ``host:port``; ConfigError naming ``key`` when malformed."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}={value!r}: expected 'host:port'")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: port is not a number") from None
    if not host or not 0 < port < 65536:
        raise ConfigError(f"{key}={value!r}: expected 'host:port' with 0 < port < 65536")
    return HostPort(host, port)


def _coerce(raw: str, current: object) -> object:
    """Turn an environment string into the type of the value it overrides."""
    if isinstance(current, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            return raw  # validation reports it with its key
    return raw


def apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``FLASHSALE_<SECTION>__<KEY>`` (and list-entry) overrides to raw TOML data."""
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) == 2:
            section, key = parts
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{name}: [{section}] is not a table")
            table[key] = _coerce(raw, table.get(key))
        elif len(parts) == 3 and parts[0] in ("nodes", "gateways"):
            section, entry_id, key = parts
            entries = data.get(section, [])
            matches = [e for e in entries if str(e.get("id", "")).lower() == entry_id]
            if not matches:
                raise ConfigError(f"{name}: no {section} entry with id {entry_id!r}")
            matches[0][key] = _coerce(raw, matches[0].get(key))
    return data


def _int(table: Mapping[str, Any], key: str, section: str, default: int, lo: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{section}.{key}={value!r}: expected an integer >= {lo}")
    return value


def _str(table: Mapping[str, Any], key: str, section: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{section}.{key}={value!r}: expected a non-empty string")
    return value


def build_config(data: Mapping[str, Any], base_dir: Path, path: Path | None = None) -> ClusterConfig:
    """Build and validate a ClusterConfig from raw (already overridden) TOML data."""
    c = data.get("cluster", {})
    name = _str(c, "name", "cluster", "local")
    data_dir = Path(_str(c, "data_dir", "cluster", "var"))
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()
    secret = _str(c, "secret", "cluster")
    mode = _str(c, "mode", "cluster", "development")
    if mode not in ("development", "production"):
        raise ConfigError(f"cluster.mode={mode!r}: expected 'development' or 'production'")
    if mode == "production" and (secret == DEV_SECRET or len(secret) < 32):
        raise ConfigError(
            "cluster.secret: production mode refuses the development default and secrets "
            "shorter than 32 characters (set FLASHSALE_CLUSTER__SECRET)"
        )
    durability = _str(c, "durability", "cluster", "fsync")
    if durability not in ("fsync", "os"):
        raise ConfigError(f"cluster.durability={durability!r}: expected 'fsync' or 'os'")

    nodes: list[NodeConfig] = []
    for i, n in enumerate(data.get("nodes", [])):
        nid = _str(n, "id", f"nodes[{i}]")
        nodes.append(
            NodeConfig(
                nid,
                parse_hostport(n.get("raft"), f"nodes[{nid}].raft"),
                parse_hostport(n.get("api"), f"nodes[{nid}].api"),
            )
        )
    if not nodes:
        raise ConfigError("[[nodes]]: at least one node is required (3 or 5 for fault tolerance)")
    gateways = tuple(
        GatewayConfig(
            _str(g, "id", f"gateways[{i}]"),
            parse_hostport(g.get("listen"), f"gateways[{i}].listen"),
        )
        for i, g in enumerate(data.get("gateways", []))
    )
    admin = AdminConfig(parse_hostport(data.get("admin", {}).get("listen", "127.0.0.1:8081"),
                                       "admin.listen"))
    storage_url = _str(data.get("storage", {}), "url", "storage", "sqlite:///var/orders.db")
    if storage_url.startswith("sqlite:///") and not storage_url.startswith("sqlite:////"):
        rel = storage_url.removeprefix("sqlite:///")
        storage_url = "sqlite:///" + str((base_dir / rel).resolve())
    elif not storage_url.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise ConfigError(f"storage.url={storage_url!r}: expected sqlite:/// or postgresql://")

    r = data.get("raft", {})
    raft = RaftConfig(
        append_entries_period_ms=_int(r, "append_entries_period_ms", "raft", 30, 1),
        election_timeout_min_ms=_int(r, "election_timeout_min_ms", "raft", 300, 10),
        election_timeout_max_ms=_int(r, "election_timeout_max_ms", "raft", 600, 10),
        commit_timeout_ms=_int(r, "commit_timeout_ms", "raft", 5000, 10),
        expire_period_ms=_int(r, "expire_period_ms", "raft", 250, 10),
        feed_retention_events=_int(r, "feed_retention_events", "raft", 200_000, 100),
        log_compaction_entries=_int(r, "log_compaction_entries", "raft", 50_000, 10),
    )
    if raft.election_timeout_max_ms <= raft.election_timeout_min_ms:
        raise ConfigError(
            f"raft.election_timeout_max_ms={raft.election_timeout_max_ms} must exceed "
            f"raft.election_timeout_min_ms={raft.election_timeout_min_ms}"
        )
    if raft.append_entries_period_ms * 3 > raft.election_timeout_min_ms:
        raise ConfigError(
            f"raft.append_entries_period_ms={raft.append_entries_period_ms} must be at most a "
            f"third of raft.election_timeout_min_ms={raft.election_timeout_min_ms}"
        )
    lg = data.get("ledger", {})
    ledger = LedgerConfig(
        payment_ttl_s=_int(lg, "payment_ttl_s", "ledger", 600, 1),
        retention_s=_int(lg, "retention_s", "ledger", 3600, 1),
    )

    _check_unique("node id", [n.id for n in nodes])
    _check_unique("gateway id", [g.id for g in gateways])
    addrs = [str(n.raft) for n in nodes] + [str(n.api) for n in nodes]
    addrs += [str(g.listen) for g in gateways] + [str(admin.listen)]
    _check_unique("listen address", addrs)
    return ClusterConfig(
        name=name,
        data_dir=data_dir,
        secret=secret,
        mode=mode,
        durability=durability,
        nodes=tuple(nodes),
        gateways=gateways,
        admin=admin,
        storage=StorageConfig(storage_url),
        raft=raft,
        ledger=ledger,
        path=path,
    )


def _check_unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"duplicate {what}: {v!r}")
        seen.add(v)


def load_config(path: str | Path = "cluster.toml", env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Read, override from the environment, and validate a cluster config file."""
    p = Path(path).resolve()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    data = apply_env_overrides(raw, os.environ if env is None else env)
    return build_config(data, p.parent, p)
