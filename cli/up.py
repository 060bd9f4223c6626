"""``flashsale up``: the whole cluster of a config on this machine, until Ctrl-C.

Every node, the snapshot writer (the ledger's orders into ``[storage] url``), every
gateway and the console run as supervised children (``python -m cli node n1 --config
...``), each logging to ``<data_dir>/logs/<id>.log``, with its pid in
``<data_dir>/run/<id>.pid`` while it runs. A part whose server module is not installed is
skipped with a line saying so. Once started, a side task
waits for the ports to listen and a leader to be elected, prints where to go and, with
``--demo``, creates the demo product (idempotently: running ``up --demo`` again keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from cli.failure import Failure
from cli.money import format_minor
from cli.products import create_product_command
from cluster.client import ClusterClient
from cluster.config import ClusterConfig, HostPort
from cluster.errors import ClusterError
from cluster.supervisor import ChildSpec, Supervisor

READY_TIMEOUT_S = 60.0  # ports listening and a leader elected, or a warning
POLL_S = 0.2
DEMO_PRODUCT_ID = "demo-sneaker"
DEMO_STOCK = 1000
DEMO_PRICE = Decimal("19.99")
DEMO_PER_USER_LIMIT = 2
NODE_TIER, EDGE_TIER = 0, 1  # gateways and console stop before the nodes they call
SNAPSHOTS = "snapshots"  # the snapshot writer's process id
NOTIFIER = "notifier"  # the notifier's process id


@dataclass(frozen=True, slots=True)
class Part:
    """One process of the cluster and the addresses it must be able to listen on."""

    spec: ChildSpec
    listens: tuple[HostPort, ...]
    url: str


def module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def plan(
    config: ClusterConfig, config_path: Path, *, nodes_only: bool = False
) -> tuple[list[Part], list[str]]:
    """The processes to run for ``config``, and a line for each part skipped."""
    if not module_present("node.server"):
        raise Failure("node.server is not installed: this build cannot run a node")
    logs = config.data_dir / "logs"

    def argv(*args: str) -> tuple[str, ...]:
        return (sys.executable, "-m", "cli", *args, "--config", str(config_path))

    parts = [
        Part(
            ChildSpec(n.id, argv("node", n.id), logs / f"{n.id}.log", NODE_TIER),
            (n.raft, n.api),
            n.api.url,
        )
        for n in config.nodes
    ]
    skipped: list[str] = []
    if nodes_only:
        return parts, ["--nodes-only: no gateways, no console"]
    if module_present("snapshots.server"):
        # It reads the nodes' feed: the edge tier, stopped before the nodes.
        listen = config.snapshots.listen
        parts.append(
            Part(
                ChildSpec(SNAPSHOTS, argv("snapshots"), logs / f"{SNAPSHOTS}.log", EDGE_TIER),
                () if listen is None else (listen,),
                config.storage.url,
            )
        )
    else:
        skipped.append("snapshots.server is not installed: orders are not written to storage")
    notices = config.notifier.listen
    if notices is not None and module_present("notifier.server"):
        # Email and SMS from the nodes' feed; the gateways forward subscriptions to it.
        parts.append(
            Part(
                ChildSpec(NOTIFIER, argv("notifier"), logs / f"{NOTIFIER}.log", EDGE_TIER),
                (notices,),
                notices.url,
            )
        )
    elif notices is not None:
        skipped.append("notifier.server is not installed: no email or SMS to shoppers")
    if not config.gateways:
        skipped.append("no [[gateways]] in the config: no shop")
    elif module_present("gateway.server"):
        parts += [
            Part(
                ChildSpec(g.id, argv("gateway", g.id), logs / f"{g.id}.log", EDGE_TIER),
                (g.listen,),
                g.listen.url,
            )
            for g in config.gateways
        ]
    else:
        skipped.append("gateway.server is not installed: skipping the gateways")
    sandbox = config.payments.sandbox_listen
    if sandbox is not None and module_present("payments.sandbox"):
        # A provider the gateways call: it stops with the edge, after them (a lower tier).
        parts.append(
            Part(
                ChildSpec(
                    "payments-sandbox",
                    argv("payments-sandbox"),
                    logs / "payments-sandbox.log",
                    NODE_TIER,
                ),
                (sandbox,),
                sandbox.url,
            )
        )
    if module_present("admin.server"):
        parts.append(
            Part(
                ChildSpec("admin", argv("admin"), logs / "admin.log", EDGE_TIER),
                (config.admin.listen,),
                config.admin.listen.url,
            )
        )
    else:
        skipped.append("admin.server is not installed: skipping the console")
    return parts, skipped


def pid_dir(config: ClusterConfig) -> Path:
    """Where ``flashsale up`` publishes the pid of each running process (``<id>.pid``)."""
    return config.data_dir / "run"


def check_ports_free(parts: Sequence[Part]) -> None:
    """Failure naming the first address something already listens on."""
    for part in parts:
        for address in part.listens:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((address.host, address.port))
                except OSError as exc:
                    why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                    raise Failure(
                        f"{address} ({part.spec.name}) is {why}: is another flashsale "
                        "running? Stop it or change the addresses in the config"
                    ) from None


async def listening(address: HostPort) -> bool:
    try:
        _, writer = await asyncio.open_connection(address.host, address.port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def announce(config: ClusterConfig, parts: Sequence[Part], demo: bool, out: TextIO) -> None:
    """Wait for the cluster to serve, print where it is, create the demo product."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    addresses = [a for p in parts for a in p.listens]
    while not all(await asyncio.gather(*(listening(a) for a in addresses))):
        if loop.time() > deadline:
            say(f"warning: not every port listens after {READY_TIMEOUT_S:g}s; see the logs")
            break
        await asyncio.sleep(POLL_S)
    async with ClusterClient(config) as client:
        leader = None
        while (leader := await client.leader()) is None and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
        if leader is None:
            say(f"warning: no leader elected after {READY_TIMEOUT_S:g}s; see the node logs")
        else:
            say(f"leader elected: {leader.id}")
        if demo:
            await create_demo_product(client, say)
    say(banner(config, parts))


async def create_demo_product(client: ClusterClient, say: Callable[[str], None]) -> None:
    """Create the demo product unless it exists; say how much of it is left."""
    command = create_product_command(
        product_id=DEMO_PRODUCT_ID,
        name="Demo Sneaker",
        price=DEMO_PRICE,
        currency="USD",
        stock=DEMO_STOCK,
        per_user_limit=DEMO_PER_USER_LIMIT,
    )
    try:
        answer = await client.submit([command], deadline_s=READY_TIMEOUT_S)
        result = answer.results[0]
        if not result.get("ok") and result.get("reason") != "already_exists":
            say(f"warning: demo product refused: {result.get('reason')}: {result.get('message')}")
            return
        # The answer to a replayed key is the one recorded at creation: read what is left now.
        p = (await client.get(f"/v1/products/{DEMO_PRODUCT_ID}"))["product"]
    except ClusterError as exc:
        say(f"warning: demo product not ready: {exc}")
        return
    say(
        f"demo product {p['product_id']}: {p['available']} of {p['total_stock']} available "
        f"at {format_minor(p['price_minor'], p['currency'])}, "
        f"{p['per_user_limit']} per shopper"
    )


def banner(config: ClusterConfig, parts: Sequence[Part]) -> str:
    gateway_ids = {g.id for g in config.gateways}
    gateways = [p for p in parts if p.spec.name in gateway_ids]
    console = [p for p in parts if p.spec.name == "admin"]
    writer = [p for p in parts if p.spec.name == SNAPSHOTS]
    lines = [f"flashsale cluster {config.name!r} is up"]
    if gateways:
        lines.append(f"  shop     {gateways[0].url}")
    if console:
        lines.append(
            f"  console  {console[0].url}  (an account: flashsale admin create-operator NAME)"
        )
    if writer:
        lines.append(f"  orders   {store_label(writer[0].url)}  (flashsale gdpr export USER_ID)")
    if any(p.spec.name == NOTIFIER for p in parts):
        n = config.notifier
        channels = [c for c, on in (("email", n.email_enabled), ("sms", n.sms_enabled)) if on]
        lines.append(f"  notices  {', '.join(channels) or 'none configured'}  ([notifier])")
    lines.append("  nodes    " + ", ".join(f"{n.id} {n.api.url}" for n in config.nodes))
    lines.append(f"  logs     {config.data_dir / 'logs'}")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def store_label(url: str) -> str:
    """Where the orders go, without the password a PostgreSQL URL may hold."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


async def run_up(
    config: ClusterConfig, config_path: Path, out: TextIO, *, demo: bool, nodes_only: bool
) -> int:
    """Start every part, serve until SIGINT/SIGTERM, stop every part."""
    parts, skipped = plan(config, config_path, nodes_only=nodes_only)
    for line in skipped:
        out.write(line + "\n")
    check_ports_free(parts)
    # Pid files in <data_dir>/run: a chaos run against this cluster signals by them.
    supervisor = Supervisor([p.spec for p in parts], out=out, pid_dir=pid_dir(config))
    announcer = asyncio.create_task(announce(config, parts, demo, out))
    try:
        await supervisor.run_until_signal()
    finally:
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer
    out.write("every process stopped\n")
    return 0
