"""The benchmark's cluster: 3 nodes, N gateways, the payments sandbox, and the check
that no unit was oversold.

The config comes from tests/support/cluster.py (``[bots] enabled = false``: the load
generator is trusted, and the defences would measure themselves), with a ``[payments]``
section pointing both providers at the sandbox. Every process is started into the
LocalCluster's bookkeeping; the caller's ``finally`` calls ``kill_all``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config import load_config
from loadtests.harness.processes import spawn, wait_ok
from tests.support.cluster import LocalCluster, free_ports

SANDBOX = "payments-sandbox"


def add_payments(
    cluster: LocalCluster, latency_ms: int | None = None, *, webhooks: bool = False
) -> str:
    """Append a [payments] section (both providers on the sandbox); the sandbox's URL.

    ``latency_ms``: the sandbox's delay per call (None: cluster.toml's default);
    ``webhooks``: the sandbox sends its signed webhooks to the first gateway."""
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    lines = [
        "[payments]",
        'providers = ["stripe", "paypal"]',
        f'stripe_api_base = "{base}"',
        f'paypal_api_base = "{base}"',
        f'sandbox_listen = "127.0.0.1:{port}"',
        "sandbox_decline_rate = 0.0",
    ]
    if latency_ms is not None:
        lines.append(f"sandbox_latency_ms = {latency_ms}")
    if webhooks:
        lines.append(f'sandbox_webhook_url = "{cluster.config.gateways[0].listen.url}/webhooks"')
    with open(cluster.config_path, "a", encoding="utf-8") as f:
        f.write("\n" + "\n".join(lines) + "\n")
    cluster.config = load_config(cluster.config_path, env={})
    return base


def open_cluster(
    directory: Path, gateways: int, sandbox_latency_ms: int
) -> tuple[LocalCluster, str]:
    """Write the config, start the sandbox and the 3 nodes (no gateway yet), wait for a
    leader. Returns the cluster and the sandbox's base URL."""
    cluster = LocalCluster(directory, 3, gateways=gateways)
    sandbox = add_payments(cluster, sandbox_latency_ms)
    spawn(cluster, SANDBOX, ["-m", "cli", "payments-sandbox", "--config",
                             str(cluster.config_path)], {})  # fmt: skip
    for node_id in cluster.node_ids:
        cluster.start_node(node_id, wait=False)
    for node_id in cluster.node_ids:
        cluster.wait_healthy(node_id)
    cluster.wait_for_leader()
    wait_ok(cluster, SANDBOX, sandbox + "/healthz")
    return cluster, sandbox


def create_product(cluster: LocalCluster, product_id: str, stock: int, price_minor: int) -> None:
    answer = cluster.submit([{
        "type": "create_product", "key": f"create-{product_id}", "product_id": product_id,
        "name": product_id, "price_minor": price_minor, "total_stock": stock,
    }])  # fmt: skip
    if not answer["results"][0]["ok"]:
        raise RuntimeError(f"create_product {product_id}: {answer}")


@dataclass(frozen=True)
class Exactness:
    """What every node says of the products, and whatever breaks the sale's rules."""

    ledger: str  # index and digest, equal on every node
    products: dict[str, dict[str, int]]  # product -> stock, sold, reserved, available
    problems: list[str]

    @property
    def oversold(self) -> int:
        return sum(max(0, p["sold"] + p["reserved"] - p["stock"]) for p in self.products.values())


def check_exact(cluster: LocalCluster, product_ids: list[str]) -> Exactness:
    """On every node: sold + reserved + available == stock, nothing below zero, and one
    ledger (same index and digest) once the nodes converge."""
    index, digest = cluster.wait_converged(timeout_s=60.0)
    problems: list[str] = []
    products: dict[str, dict[str, int]] = {}
    for node_id in cluster.node_ids:
        for pid in product_ids:
            p: dict[str, Any] = cluster.get(node_id, f"/v1/products/{pid}")["product"]
            counts = {"stock": int(p["total_stock"]), "sold": int(p["sold"]),
                      "reserved": int(p["reserved"]), "available": int(p["available"])}  # fmt: skip
            if counts["sold"] + counts["reserved"] + counts["available"] != counts["stock"]:
                problems.append(f"{node_id} {pid}: sold + reserved + available != stock: {counts}")
            if min(counts.values()) < 0:
                problems.append(f"{node_id} {pid}: a negative count: {counts}")
            if pid in products and products[pid] != counts:
                problems.append(f"{node_id} {pid}: differs from another node: {counts}")
            products[pid] = counts
    return Exactness(f"index {index}, digest {digest[:16]} on all 3 nodes", products, problems)
