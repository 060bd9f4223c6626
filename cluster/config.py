"""cluster.toml, parsed once into frozen dataclasses and validated eagerly.

Theory of operation: ``load_config(path)`` reads the TOML file, applies environment
overrides (``FLASHSALE_<SECTION>__<KEY>``, and ``FLASHSALE_NODES__<ID>__<KEY>`` /
``FLASHSALE_GATEWAYS__<ID>__<KEY>`` for one entry of a list), then builds and validates
a ``ClusterConfig``. Every error names the offending key and value. Relative paths
(``data_dir``, ``sqlite:///relative.db``) are resolved against the config file's folder.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.limits import MAX_COMMANDS_PER_ENTRY

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEV_SECRET = "dev-insecure-change-me"
ENV_PREFIX = "FLASHSALE_"
# [gateway] loop_lag_tick_ms, when on: finer is noise (libuv rounds timers to 1 ms),
# coarser than a second would see a starved loop too late to shed anything in time.
MIN_LOOP_LAG_TICK_MS, MAX_LOOP_LAG_TICK_MS = 5, 1000


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
    # Not a member of a freshly started cluster: it joins through `flashsale cluster
    # add-node`; the members leave it out of their initial Raft partners.
    joining: bool = False


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
    # Admission limits of the node's internal API (node.admission): requests of each kind
    # handled at once; beyond them the node answers 503 overloaded + Retry-After at once.
    max_concurrent_submits: int = 128  # POST /v1/commands (bodies up to 4 MB each)
    max_concurrent_reads: int = 256  # GET /v1/products|holds|carts|orders
    max_feed_long_polls: int = 256  # GET /v1/feed (one per gateway, writer, notifier)


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    payment_ttl_s: int = 600
    retention_s: int = 3600


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """[gateway]: settings shared by every gateway process."""

    batch_window_ms: int = 2  # how long a write waits for companions before its batch leaves
    max_batch: int = 500  # commands in one submitted batch (<= ledger MAX_COMMANDS_PER_ENTRY)
    max_in_flight_batches: int = 1  # batches submitted, not yet answered (1: strict FIFO)
    queue_limit: int = 10_000  # writes waiting for a batch; beyond it the gateway sheds (503)
    request_deadline_ms: int = 10_000  # a write answers within this, whatever the cluster does
    # Requests handled at once per gateway process (gateway.overload); beyond: 503 +
    # Retry-After before any work. Writes have their own, smaller cap so that cached reads
    # keep flowing when writes pile up; health, readiness and metrics are never refused.
    max_in_flight_requests: int = 1024
    max_in_flight_writes: int = 256
    # POST /payment waits on its provider (seconds), not on the cluster: a cap of its own.
    max_in_flight_payments: int = 2048
    # The write cap adapts so that writes are answered within about this (p90 handling
    # time plus the event loop's lag); 0: fixed.
    write_latency_target_ms: int = 250
    # The event loop's lag is measured by a timer due this often; 0: not measured (the
    # write cap then sees handling time only).
    loop_lag_tick_ms: int = 25
    feed_wait_ms: int = 10_000  # long-poll wait of the edge cache's feed requests
    token_ttl_s: int = 86_400  # lifetime of shopper tokens issued by `flashsale token`
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key the gateways serve HTTPS
    tls_key: Path | None = None  # PEM private key; without TLS a gateway listens on loopback only
    # POST /session/guest mints a token for a fresh random shopper (the demo shop page).
    # None: on in development mode, off in production; true/false decides explicitly.
    guest_sessions: bool | None = None
    # Load balancers whose X-Forwarded-For is believed (addresses or networks): behind
    # them the bot defences key shoppers by their own address (gateway/forwarded.py).
    trusted_proxies: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class BotsConfig:
    """[bots]: the gateways' defences against bots (docs/BOTS.md).

    ``enabled = false`` switches every defence off at once (trusted internal load tests);
    each defence also has a switch of its own. All are on by default.
    """

    enabled: bool = True
    redis_url: str = ""  # empty: limits and queue are local to each gateway process
    redis_timeout_ms: int = 50  # a Redis call slower than this falls back to local limits
    # Rate limits: token buckets (refill per second, burst) per client IP, per shopper and
    # per bearer token. Over the limit: 429 with Retry-After.
    rate_limits: bool = True
    ip_rate: float = 20.0
    ip_burst: int = 40
    shopper_rate: float = 5.0
    shopper_burst: int = 10
    token_rate: float = 5.0
    token_burst: int = 10
    # Proof of work (ALTCHA): add-to-cart and reserve-inventory need a solved challenge.
    challenge: bool = True
    challenge_difficulty: int = 50_000  # the largest secret number; the solver's mean work is half
    challenge_ttl_s: int = 300  # a challenge expires after this; a solution is used once
    # Heuristics: each request is scored; at block_score or over it is refused (403).
    heuristics: bool = True
    block_score: int = 100
    # Distinct shoppers from one IP per window: above it "many-accounts" (50), above twice
    # it "account-farm" (100, blocks alone). 8: a household fits; docs/BOTS.md says why.
    accounts_per_ip: int = 8
    accounts_window_s: int = 600
    min_page_to_write_ms: int = 500  # a write this soon after its challenge was issued scores
    # Waiting room: before and at the sale's opening, writes need an admission token that
    # the queue hands out in ticket order at admission_rate tickets per second.
    waiting_room: bool = True
    admission_rate: float = 50.0  # tickets admitted per second (changeable from the console)
    admission_ttl_s: int = 900  # an admission token is good for this long
    queue_opens_before_s: int = 900  # tickets are handed out from this long before the opening
    # Lists and counters are bounded: past these the oldest entries are dropped.
    max_list_entries: int = 10_000  # each block/allow list
    max_tracked_clients: int = 100_000  # buckets and heuristics state per gateway process

    def active(self, defence: str) -> bool:
        """True when ``defence`` (rate_limits, challenge, heuristics, waiting_room) is on."""
        return self.enabled and bool(getattr(self, defence))


# The development master key for personal data: public, so anything sealed with it is
# readable by anyone. Production mode refuses it at load (and pii.keyring.Keyring again).
DEV_MASTER_KEY_ID = "dev"
DEV_MASTER_KEY_B64 = "N+Y8rAoEroVdSX/MuMWwEm4QAkGHo6L0bUHlgl2iCZo="
MASTER_KEY_BYTES = 32  # AES-256
MASTER_KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One master key of [pii].master_keys; ``secret`` never shows in a repr or a log."""

    key_id: str
    secret: bytes = field(repr=False)

    @property
    def is_development_default(self) -> bool:
        return self.secret == base64.b64decode(DEV_MASTER_KEY_B64)


@dataclass(frozen=True, slots=True)
class PiiConfig:
    """[pii]: the master keys that wrap every shopper's data key, and the one that wraps
    new keys (``active_key``; ``flashsale keys rotate`` re-wraps the others under it)."""

    master_keys: tuple[MasterKey, ...]
    active_key: str

    def master_key(self, key_id: str) -> MasterKey | None:
        for key in self.master_keys:
            if key.key_id == key_id:
                return key
        return None

    @property
    def active(self) -> MasterKey:
        key = self.master_key(self.active_key)
        if key is None:
            raise ConfigError(f"pii.active_key={self.active_key!r} is not in pii.master_keys")
        return key


def _dev_pii() -> PiiConfig:
    key = MasterKey(DEV_MASTER_KEY_ID, base64.b64decode(DEV_MASTER_KEY_B64))
    return PiiConfig((key,), DEV_MASTER_KEY_ID)


@dataclass(frozen=True, slots=True)
class SnapshotsConfig:
    """[snapshots]: the order-snapshot writer (``flashsale snapshots``)."""

    listen: HostPort | None = None  # /metrics and /healthz; None: no HTTP server
    batch_events: int = 5_000  # events asked per feed page (one store transaction)
    feed_wait_ms: int = 10_000  # long-poll wait of the writer's feed requests


PAYMENT_PROVIDERS = ("stripe", "paypal")  # the implementations in payments/
DEV_STRIPE_API_KEY = "sk_test_flashsale_sandbox"  # development default: the sandbox's key
DEV_PAYPAL_CLIENT_SECRET = "flashsale-sandbox-secret"  # development default, sandbox only
MAX_CHARGE_TIMEOUT_MS = 120_000


class SecretText:
    """A secret from the config: shows as ``<hidden>`` in reprs, logs and ``config check``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretText) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __deepcopy__(self, memo: dict[int, object]) -> SecretText:
        return self


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    """[payments]: providers tried in order, their endpoints, and the sandbox service.

    Flat keys (``stripe_api_base`` rather than a [payments.stripe] table) so that each is
    overridable as ``FLASHSALE_PAYMENTS__<KEY>``. Webhook secrets left empty are derived
    from the cluster secret (payments.webhooks), which the sandbox derives the same way.
    The development credentials are refused in production mode when the providers are
    built (payments.service.build_providers), as the PII development key is when used.
    """

    providers: tuple[str, ...] = ()  # tried in this order; empty: /payment answers 503
    charge_timeout_ms: int = 10_000  # no answer by then: the outcome is unknown (pending)
    breaker_failure_threshold: int = 5  # consecutive failures that open a provider's breaker
    breaker_cooldown_ms: int = 10_000  # open -> half-open (one probe) after this
    reconcile_period_ms: int = 5_000  # how often unknown attempts are asked about
    void_after_ms: int = 900_000  # a charge the provider never saw is given up after this
    stripe_api_base: str = "https://api.stripe.com"
    stripe_api_key: SecretText = field(default_factory=lambda: SecretText(DEV_STRIPE_API_KEY))
    stripe_webhook_secret: SecretText | None = None
    paypal_api_base: str = "https://api-m.sandbox.paypal.com"
    paypal_client_id: str = "flashsale-sandbox"
    paypal_client_secret: SecretText = field(
        default_factory=lambda: SecretText(DEV_PAYPAL_CLIENT_SECRET)
    )
    paypal_webhook_id: str = "flashsale-webhook"
    paypal_webhook_secret: SecretText | None = None
    sandbox_listen: HostPort | None = None  # set: `flashsale up` runs the sandbox there
    sandbox_latency_ms: int = 0  # every sandbox answer waits this long
    sandbox_decline_rate: float = 0.0  # share of otherwise-good charges declined (seeded)
    sandbox_seed: int = 1
    sandbox_webhook_url: str = ""  # base URL; the sandbox posts to <url>/stripe and /paypal


NOTIFIER_SMS_PROVIDERS = ("twilio",)  # the implementations in notifier/sms.py
MAX_NOTIFIER_FEED_PAGE_EVENTS = 10_000  # what a node serves in one feed page


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """[notifier]: the email and SMS sender (``flashsale notifier``, docs/NOTIFICATIONS.md).

    Passwords never sit in the file: ``smtp_password_env`` and ``sms_token_env`` name the
    environment variables that hold them. An empty ``smtp_host`` turns email off, an
    empty ``sms_url`` turns SMS off.
    """

    listen: HostPort | None = None  # subscriptions API, /healthz, /metrics; None: not run by up
    outbox: Path = Path("notifier/outbox.db")  # SQLite; a relative path is under data_dir
    batch_events: int = 1_000  # events asked per feed page (one outbox transaction)
    feed_wait_ms: int = 10_000  # long-poll wait of its feed requests
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_starttls: bool = True  # upgrade with STARTTLS before anything else is sent
    smtp_username: str = ""  # empty: no AUTH
    smtp_password_env: str = "FLASHSALE_SMTP_PASSWORD"
    smtp_ca_file: Path | None = None  # PEM CAs trusted for STARTTLS; None: the system's
    smtp_timeout_ms: int = 10_000
    mail_from: str = "flashsale <no-reply@flashsale.invalid>"
    sms_provider: str = "twilio"
    sms_url: str = ""  # Twilio: https://api.twilio.com/2010-04-01/Accounts/<sid>/Messages.json
    sms_account: str = ""  # basic-auth user (Twilio: the account SID)
    sms_token_env: str = "FLASHSALE_SMS_TOKEN"  # basic-auth password (Twilio: auth token)
    sms_from: str = ""  # the sender number (E.164)
    sms_timeout_ms: int = 10_000
    email_per_minute: int = 600  # rate cap of the email provider (token bucket)
    email_burst: int = 20
    sms_per_minute: int = 60  # rate cap of the SMS provider
    sms_burst: int = 5
    max_attempts: int = 10  # sends of one notification before it is given up (failed)
    retry_first_ms: int = 1_000  # first pause after a failed send; doubles per attempt
    retry_max_ms: int = 300_000
    dedupe_window_s: int = 86_400  # outbox rows (and so dedupe) are kept this long
    stock_notice_window_s: int = 1_800  # one stock notice per product, kind and address
    stale_after_s: int = 86_400  # a notice about an older event is recorded, never sent

    @property
    def email_enabled(self) -> bool:
        return bool(self.smtp_host)

    @property
    def sms_enabled(self) -> bool:
        return bool(self.sms_url)


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
    gateway_settings: GatewaySettings = field(default_factory=GatewaySettings)
    pii: PiiConfig = field(default_factory=_dev_pii)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    payments: PaymentsConfig = field(default_factory=PaymentsConfig)
    notifier: NotifierConfig = field(default_factory=NotifierConfig)
    bots: BotsConfig = field(default_factory=BotsConfig)
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
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        # An environment override of a key the file leaves at its default arrives as text.
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{section}.{key}={value!r}: expected an integer >= {lo}")
    return value


def _str(table: Mapping[str, Any], key: str, section: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{section}.{key}={value!r}: expected a non-empty string")
    return value


def build_config(
    data: Mapping[str, Any], base_dir: Path, path: Path | None = None
) -> ClusterConfig:
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
        joining = n.get("joining", False)
        if isinstance(joining, str) and joining.lower() in ("true", "false"):
            joining = joining.lower() == "true"  # an environment override arrives as text
        if not isinstance(joining, bool):
            raise ConfigError(f"nodes[{nid}].joining={joining!r}: expected true or false")
        nodes.append(
            NodeConfig(
                nid,
                parse_hostport(n.get("raft"), f"nodes[{nid}].raft"),
                parse_hostport(n.get("api"), f"nodes[{nid}].api"),
                joining,
            )
        )
    if not nodes:
        raise ConfigError("[[nodes]]: at least one node is required (3 or 5 for fault tolerance)")
    if all(n.joining for n in nodes):
        raise ConfigError("[[nodes]]: every node is joining; a cluster starts from its members")
    gateways = tuple(
        GatewayConfig(
            _str(g, "id", f"gateways[{i}]"),
            parse_hostport(g.get("listen"), f"gateways[{i}].listen"),
        )
        for i, g in enumerate(data.get("gateways", []))
    )
    admin = AdminConfig(
        parse_hostport(data.get("admin", {}).get("listen", "127.0.0.1:8081"), "admin.listen")
    )
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
        max_concurrent_submits=_int(r, "max_concurrent_submits", "raft", 128, 1),
        max_concurrent_reads=_int(r, "max_concurrent_reads", "raft", 256, 1),
        max_feed_long_polls=_int(r, "max_feed_long_polls", "raft", 256, 1),
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
    gateway_settings = _gateway_settings(data.get("gateway", {}), base_dir)
    pii = _pii(data.get("pii", {}))
    if mode == "production":
        _refuse_development_master_keys(pii)
    snapshots = _snapshots(data.get("snapshots", {}))
    payments = _payments(data.get("payments", {}))
    notifier = _notifier(data.get("notifier", {}), base_dir, data_dir, mode)
    bots = _bots(data.get("bots", {}))

    _check_unique("node id", [n.id for n in nodes])
    _check_unique("gateway id", [g.id for g in gateways])
    addrs = [str(n.raft) for n in nodes] + [str(n.api) for n in nodes]
    addrs += [str(g.listen) for g in gateways] + [str(admin.listen)]
    addrs += [str(snapshots.listen)] if snapshots.listen is not None else []
    addrs += [str(payments.sandbox_listen)] if payments.sandbox_listen is not None else []
    addrs += [str(notifier.listen)] if notifier.listen is not None else []
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
        gateway_settings=gateway_settings,
        pii=pii,
        snapshots=snapshots,
        payments=payments,
        notifier=notifier,
        bots=bots,
        path=path,
    )


def _optional_path(table: Mapping[str, Any], key: str, section: str, base_dir: Path) -> Path | None:
    if table.get(key) in (None, ""):
        return None
    path = Path(_str(table, key, section))
    return path if path.is_absolute() else (base_dir / path).resolve()


def _optional_bool(table: Mapping[str, Any], key: str, section: str) -> bool | None:
    value = table.get(key)
    if isinstance(value, str):  # an environment override of a key the file leaves out
        value = {"true": True, "false": False, "": None}.get(value.strip().lower(), value)
    if value is None or isinstance(value, bool):
        return value
    raise ConfigError(f"{section}.{key}={value!r}: expected true or false")


def _networks(table: Mapping[str, Any], key: str, section: str) -> tuple[IPNetwork, ...]:
    """A list of IP addresses or networks (a string of them, comma-separated, from an
    environment override); an address alone is a /32 or /128."""
    raw = table.get(key, [])
    if isinstance(raw, str):
        raw = [x.strip() for x in raw.split(",") if x.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(f"{section}.{key}={raw!r}: expected a list of addresses or networks")
    networks = []
    for value in raw:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{section}.{key}: {value!r} is not an IP address or network"
            ) from None
    return tuple(networks)


def _gateway_settings(g: Mapping[str, Any], base_dir: Path) -> GatewaySettings:
    d = GatewaySettings()
    settings = GatewaySettings(
        batch_window_ms=_int(g, "batch_window_ms", "gateway", d.batch_window_ms, 0),
        max_batch=_int(g, "max_batch", "gateway", d.max_batch, 1),
        max_in_flight_batches=_int(
            g, "max_in_flight_batches", "gateway", d.max_in_flight_batches, 1
        ),
        queue_limit=_int(g, "queue_limit", "gateway", d.queue_limit, 1),
        request_deadline_ms=_int(g, "request_deadline_ms", "gateway", d.request_deadline_ms, 100),
        max_in_flight_requests=_int(
            g, "max_in_flight_requests", "gateway", d.max_in_flight_requests, 2
        ),
        max_in_flight_writes=_int(g, "max_in_flight_writes", "gateway", d.max_in_flight_writes, 1),
        max_in_flight_payments=_int(
            g, "max_in_flight_payments", "gateway", d.max_in_flight_payments, 1
        ),
        write_latency_target_ms=_int(
            g, "write_latency_target_ms", "gateway", d.write_latency_target_ms, 0
        ),
        loop_lag_tick_ms=_int(g, "loop_lag_tick_ms", "gateway", d.loop_lag_tick_ms, 0),
        feed_wait_ms=_int(g, "feed_wait_ms", "gateway", d.feed_wait_ms, 0),
        token_ttl_s=_int(g, "token_ttl_s", "gateway", d.token_ttl_s, 1),
        tls_cert=_optional_path(g, "tls_cert", "gateway", base_dir),
        tls_key=_optional_path(g, "tls_key", "gateway", base_dir),
        guest_sessions=_optional_bool(g, "guest_sessions", "gateway"),
        trusted_proxies=_networks(g, "trusted_proxies", "gateway"),
    )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("gateway.tls_cert and gateway.tls_key: set both (HTTPS) or neither")
    if settings.max_batch > MAX_COMMANDS_PER_ENTRY:
        raise ConfigError(
            f"gateway.max_batch={settings.max_batch}: at most {MAX_COMMANDS_PER_ENTRY} "
            "commands fit in one ledger entry"
        )
    if settings.feed_wait_ms > 30_000:
        raise ConfigError(
            f"gateway.feed_wait_ms={settings.feed_wait_ms}: nodes long-poll at most 30000 ms"
        )
    if settings.loop_lag_tick_ms and not (
        MIN_LOOP_LAG_TICK_MS <= settings.loop_lag_tick_ms <= MAX_LOOP_LAG_TICK_MS
    ):
        raise ConfigError(
            f"gateway.loop_lag_tick_ms={settings.loop_lag_tick_ms}: expected 0 (off) or "
            f"{MIN_LOOP_LAG_TICK_MS}..{MAX_LOOP_LAG_TICK_MS}"
        )
    if settings.max_in_flight_writes >= settings.max_in_flight_requests:
        raise ConfigError(
            f"gateway.max_in_flight_writes={settings.max_in_flight_writes} must be below "
            f"gateway.max_in_flight_requests={settings.max_in_flight_requests}: reads need "
            "room of their own"
        )
    return settings


def _master_keys(value: object) -> list[tuple[str, object]]:
    """[pii].master_keys as (id, base64) pairs: a TOML table, or the text
    ``id=base64,id=base64`` of an environment override (FLASHSALE_PII__MASTER_KEYS)."""
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, str):
        pairs: list[tuple[str, object]] = []
        for item in value.split(","):
            key_id, sep, secret = item.strip().partition("=")
            if not sep:
                raise ConfigError("pii.master_keys: expected 'id=base64,id=base64' (value hidden)")
            pairs.append((key_id.strip(), secret.strip()))
        return pairs
    raise ConfigError(
        f"pii.master_keys: expected a table of id = base64, got {type(value).__name__}"
    )


def _pii(p: Mapping[str, Any]) -> PiiConfig:
    if "master_keys" not in p and "active_key" not in p:
        return _dev_pii()
    keys: list[MasterKey] = []
    for key_id, raw in _master_keys(p.get("master_keys", {})):
        if not MASTER_KEY_ID_PATTERN.fullmatch(key_id):
            raise ConfigError(
                f"pii.master_keys: key id {key_id!r} must be 1..32 of A-Z a-z 0-9 _ -"
            )
        try:
            secret = base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError):
            secret = b""
        if len(secret) != MASTER_KEY_BYTES:
            # Never echo the value: it is a secret.
            raise ConfigError(
                f"pii.master_keys.{key_id}: expected the base64 of {MASTER_KEY_BYTES} random "
                "bytes (value hidden)"
            )
        keys.append(MasterKey(key_id, secret))
    if not keys:
        raise ConfigError("pii.master_keys: at least one master key is required")
    _check_unique("pii master key id", [k.key_id for k in keys])
    active = _str(p, "active_key", "pii", keys[0].key_id if len(keys) == 1 else None)
    config = PiiConfig(tuple(keys), active)
    if config.master_key(active) is None:
        raise ConfigError(
            f"pii.active_key={active!r}: not one of pii.master_keys {[k.key_id for k in keys]}"
        )
    return config


def _refuse_development_master_keys(pii: PiiConfig) -> None:
    # Refused at load, not only when a key store opens: a production process must not
    # start (and seal anything) with a key anyone can read. Names the id, never the key.
    for key in pii.master_keys:
        if key.is_development_default:
            raise ConfigError(
                f"pii.master_keys.{key.key_id} is the public development key, refused in "
                "production mode (set FLASHSALE_PII__MASTER_KEYS and FLASHSALE_PII__ACTIVE_KEY)"
            )


def _snapshots(s: Mapping[str, Any]) -> SnapshotsConfig:
    d = SnapshotsConfig()
    listen = s.get("listen")
    config = SnapshotsConfig(
        listen=None if listen in (None, "") else parse_hostport(listen, "snapshots.listen"),
        batch_events=_int(s, "batch_events", "snapshots", d.batch_events, 1),
        feed_wait_ms=_int(s, "feed_wait_ms", "snapshots", d.feed_wait_ms, 0),
    )
    if config.batch_events > 10_000:
        raise ConfigError(
            f"snapshots.batch_events={config.batch_events}: nodes serve at most 10000 "
            "events per feed page"
        )
    if config.feed_wait_ms > 30_000:
        raise ConfigError(
            f"snapshots.feed_wait_ms={config.feed_wait_ms}: nodes long-poll at most 30000 ms"
        )
    return config


def _url(table: Mapping[str, Any], key: str, default: str, *, empty: bool = False) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"payments.{key}={value!r}: expected an http(s) URL")
    if empty and value == "":
        return value
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ConfigError(f"payments.{key}={value!r}: expected an http(s) URL")
    return value.rstrip("/")


def _secret(table: Mapping[str, Any], key: str, default: str | None) -> SecretText | None:
    value = table.get(key, default)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"payments.{key}: expected a string (value hidden)")
    return SecretText(value)


def _payments(p: Mapping[str, Any]) -> PaymentsConfig:
    d = PaymentsConfig()
    raw = p.get("providers", [])
    if isinstance(raw, str):  # FLASHSALE_PAYMENTS__PROVIDERS="stripe,paypal"
        raw = [x.strip() for x in raw.split(",") if x.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(f"payments.providers={raw!r}: expected a list of provider names")
    for name in raw:
        if name not in PAYMENT_PROVIDERS:
            raise ConfigError(
                f"payments.providers: unknown provider {name!r} (known: {list(PAYMENT_PROVIDERS)})"
            )
    _check_unique("payments provider", list(raw))
    rate = p.get("sandbox_decline_rate", d.sandbox_decline_rate)
    try:
        decline_rate = float(rate) if not isinstance(rate, bool) else -1.0
    except (TypeError, ValueError):
        decline_rate = -1.0
    if not 0.0 <= decline_rate <= 1.0:
        raise ConfigError(f"payments.sandbox_decline_rate={rate!r}: expected 0.0 .. 1.0")
    listen = p.get("sandbox_listen")
    stripe_key = _secret(p, "stripe_api_key", DEV_STRIPE_API_KEY)
    paypal_secret = _secret(p, "paypal_client_secret", DEV_PAYPAL_CLIENT_SECRET)
    if stripe_key is None or paypal_secret is None:
        raise ConfigError(
            "payments.stripe_api_key and payments.paypal_client_secret: "
            "expected a non-empty string (value hidden)"
        )
    config = PaymentsConfig(
        providers=tuple(raw),
        charge_timeout_ms=_int(p, "charge_timeout_ms", "payments", d.charge_timeout_ms, 100),
        breaker_failure_threshold=_int(
            p, "breaker_failure_threshold", "payments", d.breaker_failure_threshold, 1
        ),
        breaker_cooldown_ms=_int(p, "breaker_cooldown_ms", "payments", d.breaker_cooldown_ms, 1),
        reconcile_period_ms=_int(p, "reconcile_period_ms", "payments", d.reconcile_period_ms, 10),
        void_after_ms=_int(p, "void_after_ms", "payments", d.void_after_ms, 0),
        stripe_api_base=_url(p, "stripe_api_base", d.stripe_api_base),
        stripe_api_key=stripe_key,
        stripe_webhook_secret=_secret(p, "stripe_webhook_secret", None),
        paypal_api_base=_url(p, "paypal_api_base", d.paypal_api_base),
        paypal_client_id=_str(p, "paypal_client_id", "payments", d.paypal_client_id),
        paypal_client_secret=paypal_secret,
        paypal_webhook_id=_str(p, "paypal_webhook_id", "payments", d.paypal_webhook_id),
        paypal_webhook_secret=_secret(p, "paypal_webhook_secret", None),
        sandbox_listen=None
        if listen in (None, "")
        else parse_hostport(listen, "payments.sandbox_listen"),
        sandbox_latency_ms=_int(p, "sandbox_latency_ms", "payments", d.sandbox_latency_ms, 0),
        sandbox_decline_rate=decline_rate,
        sandbox_seed=_int(p, "sandbox_seed", "payments", d.sandbox_seed, 0),
        sandbox_webhook_url=_url(p, "sandbox_webhook_url", "", empty=True),
    )
    if config.charge_timeout_ms > MAX_CHARGE_TIMEOUT_MS:
        raise ConfigError(
            f"payments.charge_timeout_ms={config.charge_timeout_ms}: at most "
            f"{MAX_CHARGE_TIMEOUT_MS}"
        )
    return config


def _notifier_bool(table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = _optional_bool(table, key, "notifier")
    return default if value is None else value


def _notifier_text(table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or any(ord(ch) < 32 for ch in value):
        raise ConfigError(f"notifier.{key}={value!r}: expected one line of text")
    return value.strip()


def _notifier(n: Mapping[str, Any], base_dir: Path, data_dir: Path, mode: str) -> NotifierConfig:
    d = NotifierConfig()
    listen = n.get("listen")
    outbox = Path(_str(n, "outbox", "notifier", str(d.outbox)))
    sms_url = _notifier_text(n, "sms_url", d.sms_url)
    if sms_url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", sms_url):
        raise ConfigError(f"notifier.sms_url={sms_url!r}: expected an http(s) URL")
    provider = _notifier_text(n, "sms_provider", d.sms_provider)
    if provider not in NOTIFIER_SMS_PROVIDERS:
        raise ConfigError(
            f"notifier.sms_provider={provider!r}: expected one of {list(NOTIFIER_SMS_PROVIDERS)}"
        )
    config = NotifierConfig(
        listen=None if listen in (None, "") else parse_hostport(listen, "notifier.listen"),
        outbox=outbox if outbox.is_absolute() else data_dir / outbox,
        batch_events=_int(n, "batch_events", "notifier", d.batch_events, 1),
        feed_wait_ms=_int(n, "feed_wait_ms", "notifier", d.feed_wait_ms, 0),
        smtp_host=_notifier_text(n, "smtp_host", d.smtp_host),
        smtp_port=_int(n, "smtp_port", "notifier", d.smtp_port, 1),
        smtp_starttls=_notifier_bool(n, "smtp_starttls", d.smtp_starttls),
        smtp_username=_notifier_text(n, "smtp_username", d.smtp_username),
        smtp_password_env=_str(n, "smtp_password_env", "notifier", d.smtp_password_env),
        smtp_ca_file=_optional_path(n, "smtp_ca_file", "notifier", base_dir),
        smtp_timeout_ms=_int(n, "smtp_timeout_ms", "notifier", d.smtp_timeout_ms, 100),
        mail_from=_str(n, "mail_from", "notifier", d.mail_from),
        sms_provider=provider,
        sms_url=sms_url.rstrip("/"),
        sms_account=_notifier_text(n, "sms_account", d.sms_account),
        sms_token_env=_str(n, "sms_token_env", "notifier", d.sms_token_env),
        sms_from=_notifier_text(n, "sms_from", d.sms_from),
        sms_timeout_ms=_int(n, "sms_timeout_ms", "notifier", d.sms_timeout_ms, 100),
        email_per_minute=_int(n, "email_per_minute", "notifier", d.email_per_minute, 1),
        email_burst=_int(n, "email_burst", "notifier", d.email_burst, 1),
        sms_per_minute=_int(n, "sms_per_minute", "notifier", d.sms_per_minute, 1),
        sms_burst=_int(n, "sms_burst", "notifier", d.sms_burst, 1),
        max_attempts=_int(n, "max_attempts", "notifier", d.max_attempts, 1),
        retry_first_ms=_int(n, "retry_first_ms", "notifier", d.retry_first_ms, 1),
        retry_max_ms=_int(n, "retry_max_ms", "notifier", d.retry_max_ms, 1),
        dedupe_window_s=_int(n, "dedupe_window_s", "notifier", d.dedupe_window_s, 60),
        stock_notice_window_s=_int(
            n, "stock_notice_window_s", "notifier", d.stock_notice_window_s, 0
        ),
        stale_after_s=_int(n, "stale_after_s", "notifier", d.stale_after_s, 1),
    )
    if config.smtp_port > 65535:
        raise ConfigError(f"notifier.smtp_port={config.smtp_port}: expected 1..65535")
    if config.batch_events > MAX_NOTIFIER_FEED_PAGE_EVENTS:
        raise ConfigError(
            f"notifier.batch_events={config.batch_events}: nodes serve at most "
            f"{MAX_NOTIFIER_FEED_PAGE_EVENTS} events per feed page"
        )
    if config.feed_wait_ms > 30_000:
        raise ConfigError(
            f"notifier.feed_wait_ms={config.feed_wait_ms}: nodes long-poll at most 30000 ms"
        )
    if config.retry_max_ms < config.retry_first_ms:
        raise ConfigError(
            f"notifier.retry_max_ms={config.retry_max_ms} is below "
            f"notifier.retry_first_ms={config.retry_first_ms}"
        )
    if config.stock_notice_window_s > config.dedupe_window_s:
        raise ConfigError(
            f"notifier.stock_notice_window_s={config.stock_notice_window_s} exceeds "
            f"notifier.dedupe_window_s={config.dedupe_window_s} (rows are kept that long)"
        )
    if config.sms_enabled and not (config.sms_from and config.sms_account):
        raise ConfigError("notifier.sms_url is set: set notifier.sms_from and sms_account too")
    if mode == "production" and config.smtp_username and not config.smtp_starttls:
        raise ConfigError(
            "notifier.smtp_starttls=false with smtp_username: production mode refuses to "
            "send SMTP credentials in clear"
        )
    return config


def _float(table: Mapping[str, Any], key: str, section: str, default: float, lo: float) -> float:
    value = table.get(key, default)
    if isinstance(value, str):  # an environment override of a key the file leaves out
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
        raise ConfigError(f"{section}.{key}={value!r}: expected a number >= {lo}")
    return float(value)


# ALTCHA challenges: below this a challenge costs a bot nothing; above the maximum the
# verifier (bots.challenge.MAX_NUMBER) refuses honest solutions.
MIN_CHALLENGE_DIFFICULTY = 1_000
MAX_CHALLENGE_DIFFICULTY = 10_000_000


def _bots(b: Mapping[str, Any]) -> BotsConfig:
    d = BotsConfig()
    difficulty = _int(
        b, "challenge_difficulty", "bots", d.challenge_difficulty, MIN_CHALLENGE_DIFFICULTY
    )
    if difficulty > MAX_CHALLENGE_DIFFICULTY:
        raise ConfigError(
            f"bots.challenge_difficulty={difficulty}: at most {MAX_CHALLENGE_DIFFICULTY}"
        )

    def flag(key: str) -> bool:
        value = _optional_bool(b, key, "bots")
        return bool(getattr(d, key)) if value is None else value

    redis_url = b.get("redis_url", d.redis_url)
    if not isinstance(redis_url, str):
        raise ConfigError(f"bots.redis_url={redis_url!r}: expected a string")
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"bots.redis_url={redis_url!r}: expected redis://, rediss:// or unix://")
    return BotsConfig(
        enabled=flag("enabled"),
        redis_url=redis_url,
        redis_timeout_ms=_int(b, "redis_timeout_ms", "bots", d.redis_timeout_ms, 1),
        rate_limits=flag("rate_limits"),
        ip_rate=_float(b, "ip_rate", "bots", d.ip_rate, 0.001),
        ip_burst=_int(b, "ip_burst", "bots", d.ip_burst, 1),
        shopper_rate=_float(b, "shopper_rate", "bots", d.shopper_rate, 0.001),
        shopper_burst=_int(b, "shopper_burst", "bots", d.shopper_burst, 1),
        token_rate=_float(b, "token_rate", "bots", d.token_rate, 0.001),
        token_burst=_int(b, "token_burst", "bots", d.token_burst, 1),
        challenge=flag("challenge"),
        challenge_difficulty=difficulty,
        challenge_ttl_s=_int(b, "challenge_ttl_s", "bots", d.challenge_ttl_s, 1),
        heuristics=flag("heuristics"),
        block_score=_int(b, "block_score", "bots", d.block_score, 1),
        accounts_per_ip=_int(b, "accounts_per_ip", "bots", d.accounts_per_ip, 1),
        accounts_window_s=_int(b, "accounts_window_s", "bots", d.accounts_window_s, 1),
        min_page_to_write_ms=_int(b, "min_page_to_write_ms", "bots", d.min_page_to_write_ms, 0),
        waiting_room=flag("waiting_room"),
        admission_rate=_float(b, "admission_rate", "bots", d.admission_rate, 0.001),
        admission_ttl_s=_int(b, "admission_ttl_s", "bots", d.admission_ttl_s, 1),
        queue_opens_before_s=_int(b, "queue_opens_before_s", "bots", d.queue_opens_before_s, 0),
        max_list_entries=_int(b, "max_list_entries", "bots", d.max_list_entries, 1),
        max_tracked_clients=_int(b, "max_tracked_clients", "bots", d.max_tracked_clients, 100),
    )


def _check_unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"duplicate {what}: {v!r}")
        seen.add(v)


def load_config(
    path: str | Path = "cluster.toml", env: Mapping[str, str] | None = None
) -> ClusterConfig:
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
