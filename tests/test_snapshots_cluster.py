"""End to end on a real cluster: a sale's orders reach the SQLite store through the
snapshot writer process, personal data only as ciphertext (in the database, the Raft
journals and the dumps), through a writer crash and the loss of the node it read from;
then GDPR export and erasure."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster.config import StorageConfig
from pii.cli import gdpr_erase, gdpr_export
from pii.keystore import KeyStore
from pii.sealing import Sealer, Unsealer
from snapshots.database import DatabaseError, open_database
from tests.support.cluster import LocalCluster, free_ports
from tests.support.stores import STORE_KINDS, store_url

pytestmark = pytest.mark.cluster

WAIT_S = 60.0
POLL_S = 0.05
DETAILS = {
    "shipping_address": {
        "address_line1": "221B Baker Street Flat Zeta",
        "city": "Marylebone-Secret",
        "postal_code": "NW1 6XE",
        "country": "GB",
    },
    "email": "holmes.private@example.org",
    "phone": "+44 20 7946 0958",
}
PLAINTEXTS = [b"Baker Street Flat Zeta", b"Marylebone-Secret", b"holmes.private", b"7946 0958"]


class Writer:
    """``python -m snapshots --config PATH`` of a LocalCluster, stopped by pid."""

    def __init__(self, cluster: LocalCluster, url: str) -> None:
        self.cluster = cluster
        self.url = url
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        env["FLASHSALE_SNAPSHOTS__LISTEN"] = f"127.0.0.1:{self.port}"
        env["FLASHSALE_SNAPSHOTS__FEED_WAIT_MS"] = "500"
        env["FLASHSALE_STORAGE__URL"] = self.url
        with open(self.cluster.log_path("snapshots"), "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snapshots", "--config", str(self.cluster.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cluster.dir,
                env=env,
            )
        self.pids.append(self.proc.pid)
        wait_for(lambda: self.health() is not None, "the writer answers /healthz")

    def health(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the writer exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s}s: {what}")
        time.sleep(POLL_S)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = open_database(url)
    try:
        return db.query(sql, params)
    finally:
        db.close()


def applied_index(url: str) -> int:
    try:
        return int(query(url, "SELECT ledger_index FROM applied_index")[0][0])
    except DatabaseError:  # not migrated yet
        return -1


@pytest.fixture
def cluster(local_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    c = local_cluster(n_nodes=3)
    c.start()
    return c


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, cluster: LocalCluster) -> Iterator[str]:
    if request.param == "sqlite":
        yield cluster.config.storage.url  # the cluster's own file, beside its journals
    else:
        with store_url("postgresql", cluster.dir) as u:
            yield u


@pytest.fixture
def writer(cluster: LocalCluster, url: str) -> Iterator[Writer]:
    w = Writer(cluster, url)
    try:
        yield w
    finally:
        w.kill_all()


def one(cluster: LocalCluster, command: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = cluster.submit([command])
    return int(body["index"]), dict(body["results"][0])


def buy(cluster: LocalCluster, sealer: Sealer, user: str, product: str, n: int) -> tuple[int, str]:
    """Reserve, check out with sealed details, pay: (ledger index, order id)."""
    _, hold = one(
        cluster,
        {
            "type": "reserve",
            "key": f"r-{user}",
            "user_id": user,
            "product_id": product,
            "quantity": n,
        },
    )
    assert hold["ok"], hold
    _, order = one(
        cluster,
        {
            "type": "checkout",
            "key": f"c-{user}",
            "user_id": user,
            "cart_id": hold["cart_id"],
            "payment_method": "pm_card_visa",
            "sealed_details": sealer.seal(user, DETAILS),
        },
    )
    assert order["ok"], order
    index, paid = one(
        cluster,
        {
            "type": "record_payment",
            "key": f"p-{user}",
            "order_id": order["order_id"],
            "outcome": "paid",
            "amount_minor": order["amount_minor"],
            "provider": "fakepay",
            "transaction_id": f"tx-{user}",
        },
    )
    assert paid["ok"], paid
    return index, str(order["order_id"])


def test_orders_reach_the_store_sealed_through_crashes_and_failover(
    cluster: LocalCluster, url: str, writer: Writer
) -> None:
    config = dataclasses.replace(cluster.config, storage=StorageConfig(url))
    db = url
    keys = KeyStore.open(config)  # what the gateway does: data keys in the order store
    sealer = Sealer(keys)
    try:
        one(
            cluster,
            {
                "type": "create_product",
                "key": "create-p1",
                "product_id": "p1",
                "name": "Deerstalker",
                "price_minor": 4999,
                "total_stock": 10,
            },
        )
        writer.start()
        index, first = buy(cluster, sealer, "holmes", "p1", 2)
        wait_for(lambda: applied_index(db) >= index, "the first order in the store")
        row = query(db, "SELECT order_status, payment_status, pii_sealed, pii_key_id FROM orders")
        assert row[0][:2] == ("completed", "paid")
        sealed, key_id = row[0][2], row[0][3]
        assert sealed.startswith(f"v1.{key_id}.holmes.")
        assert Unsealer(keys).unseal(sealed).details == DETAILS
        leader = cluster.leader() or cluster.node_ids[0]
        node_order = cluster.get(leader, f"/v1/orders/{first}")["order"]
        assert node_order["sealed_details"] == sealed  # ciphertext in the ledger too

        # The writer dies; the sale goes on; a new writer picks up where the store is.
        writer.kill()
        _, second = buy(cluster, sealer, "watson", "p1", 3)
        writer.start()
        # The node the writer reads first goes down: it reads from another.
        cluster.kill_node(cluster.node_ids[0])
        cluster.wait_for_leader(exclude=cluster.node_ids[0])
        index, third = buy(cluster, sealer, "hudson", "p1", 1)
        wait_for(lambda: applied_index(db) >= index, "the orders after the failover")
        assert "flashsale_snapshots_events_applied" in writer.metrics()
        assert writer.stop() == 0  # SIGTERM: a clean exit

        live = cluster.running_nodes()[0]
        product = cluster.get(live, "/v1/products/p1")["product"]
        inventory = query(
            db,
            "SELECT available_quantity, reserved_quantity, sold_quantity, total_stock "
            "FROM inventory WHERE product_id = 'p1'",
        )
        assert inventory == [(product["available"], product["reserved"], product["sold"], 10)]
        assert product["sold"] == 6
        orders = query(db, "SELECT order_id, user_id, order_status FROM orders ORDER BY order_id")
        assert orders == sorted(
            [
                (first, "holmes", "completed"),
                (second, "watson", "completed"),
                (third, "hudson", "completed"),
            ]
        )
        assert query(db, "SELECT COUNT(*), COUNT(DISTINCT order_id) FROM payment") == [(3, 3)]
        moves = query(db, "SELECT COUNT(*) FROM stock_moves")[0][0]
        assert moves == 1 + 3 * 2  # the creation, then reserve and sale of each order

        # Personal data is ciphertext everywhere: the store and every node's files.
        files = [p for p in cluster.dir.rglob("*") if p.is_file() and "logs" not in p.parts]
        assert len(files) > 3
        if url.startswith("sqlite"):
            assert any(p.name.startswith("orders.db") for p in files)
        for path in files:
            raw = path.read_bytes()
            for secret in PLAINTEXTS:
                assert secret not in raw, f"{secret!r} in clear in {path}"
        text = repr(
            [query(url, f"SELECT * FROM {table}") for table in ("orders", "payment", "cart")]
        ).encode()
        assert "v1.dk" in text.decode()
        for secret in PLAINTEXTS:
            assert secret not in text
    finally:
        keys.close()

    export = gdpr_export(config, "watson")
    assert [o["order_id"] for o in export["orders"]] == [second]
    assert export["orders"][0]["personal_details"] == {"status": "present", "details": DETAILS}
    erased = gdpr_erase(config, "watson")
    assert erased["orders_kept_without_personal_data"] == 1
    after = gdpr_export(config, "watson")
    assert after["orders"][0]["personal_details"]["status"] == "erased"
    assert after["orders"][0]["amount_minor"] == 3 * 4999
    assert gdpr_export(config, "holmes")["orders"][0]["personal_details"]["status"] == "present"
