"""`flashsale gdpr export|erase`, `flashsale keys rotate` and `flashsale snapshots` on a
real SQLite order store: what an operator runs for a shopper's data and for key hygiene."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from admin.pii import UnsealError, unseal
from cli.main import main
from cluster.client import ClusterClient
from cluster.config import DEV_MASTER_KEY_B64, ClusterConfig, load_config
from ledger.codec import encode_result
from pii.keystore import KeyStore
from pii.sealing import Sealer
from snapshots.ledger_feed import LedgerFeed
from snapshots.store import SnapshotStore
from tests.support.cluster import LocalCluster, free_ports

REPO = Path(__file__).resolve().parent.parent
K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()
START_TIMEOUT_S = 30.0


def details_of(user: str) -> dict[str, Any]:
    return {
        "shipping_address": {"address_line1": "1 Main St", "city": "Springfield", "country": "US"},
        "email": f"{user}@example.com",
    }


def write_config(directory: Path, *, snapshots_listen: str | None = None) -> Path:
    raft, api, admin = free_ports(3)
    lines = [
        "[cluster]",
        'secret = "a-test-secret"',
        f'data_dir = "{directory / "var"}"',
        "[[nodes]]",
        'id = "n1"',
        f'raft = "127.0.0.1:{raft}"',
        f'api = "127.0.0.1:{api}"',
        "[admin]",
        f'listen = "127.0.0.1:{admin}"',
        "[storage]",
        'url = "sqlite:///orders.db"',  # relative to the config file
        "[pii]",
        f'master_keys = {{ k1 = "{K1}" }}',
        'active_key = "k1"',
    ]
    if snapshots_listen is not None:
        lines += ["[snapshots]", f'listen = "{snapshots_listen}"', "feed_wait_ms = 100"]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("FLASHSALE_"):
            monkeypatch.delenv(name)
    return write_config(tmp_path)


def record_orders(config: ClusterConfig, users: list[str]) -> dict[str, str]:
    """Each shopper buys one tee with sealed details (sealed as the gateway seals them) and
    the order store gets the events as the snapshot writer writes them; the sealed texts."""
    keys = KeyStore.open(config)
    try:
        sealer = Sealer(keys)
        sealed = {user: sealer.seal(user, details_of(user)) for user in users}
    finally:
        keys.close()
    feed = LedgerFeed(10_000)
    at_ms = time.time_ns() // 1_000_000
    feed.apply(at_ms, [{"type": "create_product", "key": "create-tee", "product_id": "tee",
                        "name": "Tee", "price_minor": 1999, "total_stock": 10}])  # fmt: skip
    for user in users:
        held = encode_result(
            feed.apply(at_ms, [{"type": "reserve", "key": f"r-{user}", "user_id": user,
                                "product_id": "tee", "quantity": 1}]).results[0]
        )  # fmt: skip
        placed = encode_result(
            feed.apply(at_ms, [{"type": "checkout", "key": f"c-{user}", "user_id": user,
                                "cart_id": held["cart_id"], "payment_method": "pm_card_visa",
                                "sealed_details": sealed[user]}]).results[0]
        )  # fmt: skip
        assert placed["ok"], placed
    store = SnapshotStore.open(config.storage.url)
    try:
        store.apply_page(asyncio.run(feed.fetch(0, 10_000, 0)), 0)
    finally:
        store.close()
    return sealed


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def export(config_path: Path, user: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(["gdpr", "export", user, "--config", str(config_path)], capsys)
    assert code == 0, err
    found: dict[str, Any] = json.loads(out)
    return found


class Terminal(io.StringIO):
    """A stdin that is a terminal, with the operator's answer typed in."""

    def isatty(self) -> bool:
        return True


def test_export_prints_the_shoppers_orders_with_personal_details_opened(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(config_path)
    record_orders(config, ["alice", "bob"])
    found = export(config_path, "alice", capsys)
    assert found["user_id"] == "alice" and found["as_of_ledger_index"] > 0
    assert found["data_key"]["master_key_id"] == "k1"
    [order] = found["orders"]
    assert order["personal_details"] == {"status": "present", "details": details_of("alice")}
    assert [line["product_id"] for line in order["lines"]] == ["tee"]
    assert "bob" not in json.dumps(found)
    nobody = export(config_path, "carol", capsys)
    assert nobody["orders"] == [] and nobody["data_key"] is None


def test_erase_asks_first_and_then_nothing_opens_the_details(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(config_path)
    sealed = record_orders(config, ["alice", "bob"])
    erase = ["gdpr", "erase", "alice", "--config", str(config_path)]

    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))  # piped: nobody to ask
    code, _, err = run(erase, capsys)
    assert code == 2 and "--yes" in err and err.count("\n") == 1
    monkeypatch.setattr(sys, "stdin", Terminal("no\n"))
    code, _, err = run(erase, capsys)
    assert code == 1 and "not erased" in err.splitlines()[-1]
    assert unseal(config, sealed["alice"])["details"] == details_of("alice")

    key_id = export(config_path, "alice", capsys)["data_key"]["key_id"]
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    code, out, err = run(erase, capsys)
    assert code == 0, err
    erased = json.loads(out)
    assert erased["destroyed_key_ids"] == [key_id]
    assert erased["orders_kept_without_personal_data"] == 1

    with pytest.raises(UnsealError, match=f"personal data of 'alice' is erased: data key {key_id}"):
        unseal(config, sealed["alice"])
    after = export(config_path, "alice", capsys)
    assert after["orders"][0]["personal_details"] == {
        "status": "erased",
        "erased_at_ms": erased["erased_at_ms"],
    }
    assert after["data_key"] is None and "Springfield" not in json.dumps(after)
    # Others keep theirs; --yes erases without asking, even with nobody at the terminal.
    assert unseal(config, sealed["bob"])["user_id"] == "bob"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(["gdpr", "erase", "bob", "--yes", "--config", str(config_path)], capsys)
    assert code == 0, err
    with pytest.raises(UnsealError, match="'bob' is erased"):
        unseal(config, sealed["bob"])


def test_rotate_rewraps_every_data_key_so_the_old_master_key_can_go(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = record_orders(load_config(config_path), ["alice", "bob", "carol"])
    monkeypatch.setenv("FLASHSALE_PII__MASTER_KEYS", f"k1={K1},k2={K2}")
    monkeypatch.setenv("FLASHSALE_PII__ACTIVE_KEY", "k2")
    code, out, err = run(["keys", "rotate", "--config", str(config_path)], capsys)
    assert code == 0, err
    rotation = json.loads(out)
    assert rotation["active_key"] == "k2" and rotation["rewrapped"] == 3
    assert rotation["by_master_key"] == {"k2": 3}
    assert "re-wrapped 3 data keys under master key 'k2'" in err
    code, out, _ = run(["keys", "rotate", "--config", str(config_path)], capsys)
    assert code == 0 and json.loads(out)["rewrapped"] == 0  # resumable: nothing left

    monkeypatch.setenv("FLASHSALE_PII__MASTER_KEYS", f"k2={K2}")  # k1 retired
    config = load_config(config_path)
    for user, text in sealed.items():
        assert unseal(config, text)["details"] == details_of(user)


def test_without_rotation_a_retired_master_key_is_named(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record_orders(load_config(config_path), ["alice"])
    monkeypatch.setenv("FLASHSALE_PII__MASTER_KEYS", f"k2={K2}")
    monkeypatch.setenv("FLASHSALE_PII__ACTIVE_KEY", "k2")
    details = export(config_path, "alice", capsys)["orders"][0]["personal_details"]
    assert details["status"] == "unreadable" and "'k1'" in details["reason"]


def test_store_and_key_failures_are_one_line_with_an_exit_code(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record_orders(load_config(config_path), ["alice"])
    # A retired master key while rotating: the data key cannot be unwrapped to re-wrap.
    monkeypatch.setenv("FLASHSALE_PII__MASTER_KEYS", f"k2={K2}")
    monkeypatch.setenv("FLASHSALE_PII__ACTIVE_KEY", "k2")
    code, out, err = run(["keys", "rotate", "--config", str(config_path)], capsys)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "master key 'k1'" in err and K1 not in err
    monkeypatch.delenv("FLASHSALE_PII__MASTER_KEYS")
    monkeypatch.delenv("FLASHSALE_PII__ACTIVE_KEY")

    # A database migrated by a newer flashsale is refused, not written.
    db = sqlite3.connect(config_path.parent / "orders.db")
    with db:
        db.execute("INSERT INTO schema_version (version, name, applied_at_ms) VALUES (99, 'x', 0)")
    db.close()
    code, out, err = run(["gdpr", "export", "alice", "--config", str(config_path)], capsys)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "upgrade flashsale" in err

    # The development master key in production mode: a config error, key not shown.
    monkeypatch.setenv("FLASHSALE_CLUSTER__MODE", "production")
    monkeypatch.setenv("FLASHSALE_CLUSTER__SECRET", "p" * 40)
    monkeypatch.setenv("FLASHSALE_PII__MASTER_KEYS", f"dev={DEV_MASTER_KEY_B64}")
    monkeypatch.setenv("FLASHSALE_PII__ACTIVE_KEY", "dev")
    code, _, err = run(["keys", "rotate", "--config", str(config_path)], capsys)
    assert code == 2 and "development key" in err and DEV_MASTER_KEY_B64 not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["gdpr", "export", "two words"],
        ["gdpr", "erase"],
        ["gdpr", "forget", "alice"],
        ["keys"],
        ["keys", "rotate", "now"],
    ],
)
def test_bad_data_commands_are_usage_errors(
    argv: list[str], config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--config", str(config_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_config_check_never_prints_a_master_key(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["config", "check", "--config", str(config_path)], capsys)
    assert code == 0
    shown = json.loads(out)["pii"]
    assert shown["master_keys"] == [{"key_id": "k1", "secret": "<set>"}]
    assert K1 not in out and repr(b"1" * 32) not in out


def test_snapshots_runs_the_writer_until_sigterm(tmp_path: Path) -> None:
    """`flashsale snapshots` migrates the store, serves /healthz, and exits 0 on SIGTERM
    (no node answers here: it keeps asking, which must not stop it)."""
    (port,) = free_ports(1)
    path = write_config(tmp_path, snapshots_listen=f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    with open(tmp_path / "snapshots.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "snapshots", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        health: dict[str, Any] | None = None
        # applied_index is -1 until the store is open (migrations run), then 0.
        while health is None or health.get("applied_index") == -1:
            assert proc.poll() is None, (tmp_path / "snapshots.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "snapshots.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    health = json.loads(r.read())
            except OSError:
                time.sleep(0.05)
        assert health == {"ok": True, "applied_index": 0}
        assert (tmp_path / "orders.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=START_TIMEOUT_S) == 0, (tmp_path / "snapshots.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def children_started(config: ClusterConfig) -> dict[str, list[int]]:
    """Child name -> the pids `up`'s supervisor started it as (from the child logs)."""
    pids: dict[str, list[int]] = {}
    for log in (config.data_dir / "logs").glob("*.log"):
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("proc") == "supervisor" and record.get("msg") == "started":
                pids.setdefault(record["child"], []).append(int(record["pid"]))
    return pids


def flashsale(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--config", str(config_path)],
        capture_output=True, text=True, cwd=REPO, timeout=START_TIMEOUT_S,
    )  # fmt: skip


def wait_for(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.cluster
def test_up_runs_the_snapshot_writer_so_orders_reach_the_store(tmp_path: Path) -> None:
    """`flashsale up` (as `make run`): a checkout on the cluster shows in `gdpr export`."""
    config_path = LocalCluster(tmp_path, durability="os").config_path
    config = load_config(config_path, env={})
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: flashsale(config_path, "status").returncode == 0, "a leader")
        added = flashsale(config_path, "product", "add", "--id", "tee", "--name", "Tee",
                          "--price", "19.99", "--stock", "5")  # fmt: skip
        assert added.returncode == 0, added.stderr
        keys = KeyStore.open(config)
        try:
            sealed = Sealer(keys).seal("alice", details_of("alice"))
        finally:
            keys.close()

        async def buy() -> None:
            async with ClusterClient(config) as client:
                held = await client.submit([{"type": "reserve", "key": "r-alice",
                                             "user_id": "alice", "product_id": "tee",
                                             "quantity": 1}])  # fmt: skip
                placed = await client.submit([{"type": "checkout", "key": "c-alice",
                                               "user_id": "alice",
                                               "cart_id": held.results[0]["cart_id"],
                                               "payment_method": "pm_card_visa",
                                               "sealed_details": sealed}])  # fmt: skip
                assert placed.results[0]["ok"], placed.results

        asyncio.run(buy())

        def exported() -> bool:
            done = flashsale(config_path, "gdpr", "export", "alice")
            return done.returncode == 0 and len(json.loads(done.stdout)["orders"]) == 1

        wait_for(exported, "the snapshot writer to store alice's order")
        order = json.loads(flashsale(config_path, "gdpr", "export", "alice").stdout)["orders"][0]
        assert order["personal_details"]["details"] == details_of("alice")
        writer_pids = children_started(config)["snapshots"]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=START_TIMEOUT_S)
        assert process.returncode == 0, output
        assert f"orders   {config.storage.sqlite_path}" in output
        assert "every process stopped" in output
        for pid in writer_pids:
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"writer {pid} to exit")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=START_TIMEOUT_S)
        for pids in children_started(config).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
