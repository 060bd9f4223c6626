"""End to end: `flashsale up` runs a real 3-node cluster that the other commands operate,
the client follows the leader through a SIGKILL, and the supervisor restarts the node."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from cli.products import create_product_command, restock_command
from cluster.client import ClusterClient
from cluster.config import load_config
from tests.support.cluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 60.0

pytestmark = pytest.mark.cluster


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S:g}s waiting for {what}")
        time.sleep(0.2)


def flashsale(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=DEADLINE_S,
    )


def started(config: Path) -> dict[str, list[int]]:
    """Child name -> the pids the supervisor started it as, oldest first (from its log)."""
    pids: dict[str, list[int]] = {}
    for log in (load_config(config, env={}).data_dir / "logs").glob("*.log"):
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("proc") == "supervisor" and record.get("msg") == "started":
                    pids.setdefault(record["child"], []).append(int(record["pid"]))
    return pids


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A generated 3-node config (the harness only writes it: `up` starts the nodes)."""
    return LocalCluster(tmp_path, durability="os").config_path


@pytest.fixture
def up(config: Path) -> Iterator[subprocess.Popen[str]]:
    """`flashsale up --nodes-only --demo` running, with a leader elected."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--nodes-only", "--demo", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")},
    )
    try:
        wait_until(lambda: flashsale(config, "status").returncode == 0, "a leader")
        yield process
    finally:
        # Whatever happened: no process of this test survives it.
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=DEADLINE_S)
        for pids in started(config).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def stop(up: subprocess.Popen[str], pids: list[int]) -> str:
    """SIGTERM `up`; its output once it and every one of ``pids`` are gone."""
    up.send_signal(signal.SIGTERM)
    output, _ = up.communicate(timeout=DEADLINE_S)
    assert up.returncode == 0, output
    wait_until(lambda: not any(alive(pid) for pid in pids), "every child to exit")
    assert "every process stopped" in output
    return output


def test_up_status_product_and_a_clean_stop(config: Path, up: subprocess.Popen[str]) -> None:
    status = flashsale(config, "status")
    assert re.search(r"^leader: n[123] \(3/3 nodes answering\)$", status.stdout, re.M), status

    add = ["product", "add", "--id", "p1", "--name", "Sneaker", "--price", "19.99"]
    added = flashsale(config, *add, "--stock", "100", "--per-user-limit", "2")
    assert added.returncode == 0, added.stderr
    assert "19.99 USD" in added.stdout
    again = flashsale(config, *add, "--stock", "100", "--per-user-limit", "2")
    assert again.returncode == 0, "the same `product add` twice: one product, answered twice"
    other = flashsale(config, *add, "--stock", "7")
    assert other.returncode == 1 and "already_exists" in other.stderr

    restocked = flashsale(config, "product", "restock", "--id", "p1", "--quantity", "5")
    assert restocked.returncode == 0, restocked.stderr
    wait_until(
        lambda: flashsale(config, "product", "show", "demo-sneaker").returncode == 0,
        "`up --demo` to create its product",
    )
    listed = json.loads(flashsale(config, "product", "list", "--json").stdout)
    by_id = {p["product_id"]: p for p in listed["products"]}
    assert sorted(by_id) == ["demo-sneaker", "p1"]
    product = by_id["p1"]
    assert product["price_minor"] == 1999
    assert product["total_stock"] == product["available"] == 105

    missing = flashsale(config, "product", "show", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("flashsale: NotFound")

    children = [pid for pids in started(config).values() for pid in pids]
    assert len(children) == 3 and all(alive(pid) for pid in children)
    output = stop(up, children)
    assert "demo product demo-sneaker: 1000 of 1000 available at 19.99 USD" in output


async def test_the_client_follows_a_new_leader_and_the_killed_node_comes_back(
    config: Path, up: subprocess.Popen[str]
) -> None:
    cluster = load_config(config, env={})
    create = create_product_command(
        product_id="p1",
        name="Sneaker",
        price=Decimal("5"),
        currency="USD",
        stock=10,
    )
    async with ClusterClient(cluster) as client:
        first = await client.submit([create])
        assert first.results[0]["ok"] is True
        leader = await client.leader()
        assert leader is not None
        victim = started(config)[leader.id][-1]
        os.kill(victim, signal.SIGKILL)

        restock = restock_command(product_id="p1", quantity=1)
        after = await client.submit([restock], deadline_s=DEADLINE_S)
        assert after.results[0]["ok"] is True and after.results[0]["available"] == 11
        replay = await client.submit([create], deadline_s=DEADLINE_S)
        assert replay.results[0] == first.results[0], "same key, same recorded result"

    wait_until(lambda: len(started(config)[leader.id]) == 2, f"{leader.id} to be restarted")
    wait_until(
        lambda: "(3/3 nodes answering)" in flashsale(config, "status").stdout,
        f"{leader.id} to answer again",
    )
    output = stop(up, [pid for pids in started(config).values() for pid in pids])
    assert f"{leader.id} exited (code -9)" in output
