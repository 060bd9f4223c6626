"""``flashsale bots``: the gateways' bot defences from the command line, against a real
gateway process, and the pieces it is made of."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from admin import audit, bots_store
from admin.bots_gateways import GatewayAnswer
from admin.store import admin_db_path, open_store
from cli.bots import list_entry, parse_settings, status_table
from cli.failure import EXIT_USAGE, Failure
from cluster.config import build_config
from tests.support.cluster import LocalCluster


def flashsale(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def gateway_doc(cluster: LocalCluster) -> dict[str, Any]:
    url = cluster.config.gateways[0].listen.url + "/internal/bots"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=5.0) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


# -- pieces -----------------------------------------------------------------------------------


def test_settings_are_checked_like_the_consoles_form() -> None:
    assert parse_settings({"challenge_difficulty": "200000", "admission_rate": None,
                           "block_score": "80"}) == {"challenge_difficulty": 200_000,
                                                     "block_score": 80}  # fmt: skip
    with pytest.raises(Failure) as err:
        parse_settings({"challenge_difficulty": "5"})
    assert err.value.exit_code == EXIT_USAGE and "outside 1000..10000000" in str(err.value)
    with pytest.raises(Failure, match="nothing to set"):
        parse_settings({"challenge_difficulty": None})


def test_the_list_follows_the_value_unless_told_it_is_a_shopper() -> None:
    assert list_entry("block", "10.1.2.3/8", shopper=False) == ("block_ips", "10.0.0.0/8")
    assert list_entry("allow", "vip-1", shopper=False) == ("allow_shoppers", "vip-1")
    with pytest.raises(Failure, match="not a shopper id"):
        list_entry("block", "10.0.0.1/8", shopper=True)


def test_status_shows_each_gateway_and_the_total(tmp_path: Path) -> None:
    config = build_config(
        {
            "cluster": {"data_dir": str(tmp_path), "secret": "s"},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [{"id": "g1", "listen": "127.0.0.1:3"},
                         {"id": "g2", "listen": "127.0.0.1:4"}],
        },
        tmp_path,
    )  # fmt: skip
    doc = {"enabled": True, "settings": {"challenge_difficulty": 50_000, "admission_rate": 50.0,
                                         "block_score": 100},
           "counts": {"allowed": 7, "limited": 2, "challenged": 1, "blocked": 0, "queued": 0},
           "queue": {"waiting": 3}, "redis": {"configured": False}}  # fmt: skip
    text = status_table(config, [GatewayAnswer("g1", doc), GatewayAnswer("g2", None, "down")])
    lines = [line.split() for line in text.splitlines()]
    assert lines[0][:3] == ["GATEWAY", "UP", "DIFFICULTY"]
    assert lines[1][:8] == ["g1", "yes", "50000", "50", "100", "7", "2", "1"]
    assert lines[2][:2] == ["g2", "no"] and lines[2][-1] == "down"
    assert lines[3][:3] == ["total", "1/2", "7"]


# -- against a gateway ------------------------------------------------------------------------


@pytest.mark.cluster
def test_bots_commands_change_the_gateway_and_the_consoles_record(
    local_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = local_cluster(n_nodes=1, gateways=1, bots={"enabled": True})
    cluster.start()
    cfg = cluster.config_path

    done = flashsale(cfg, "bots", "block", "198.51.100.7/24")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "added 198.51.100.0/24 to block_ips: applied on g1"
    assert gateway_doc(cluster)["lists"]["block_ips"] == ["198.51.100.0/24"]

    done = flashsale(cfg, "bots", "set", "--difficulty", "123456", "--block-score", "80")
    assert done.returncode == 0, done.stderr
    settings = gateway_doc(cluster)["settings"]
    assert (settings["challenge_difficulty"], settings["block_score"]) == (123_456, 80)

    shown = flashsale(cfg, "bots", "status")
    assert shown.returncode == 0, shown.stderr
    g1 = next(line.split() for line in shown.stdout.splitlines() if line.startswith("g1"))
    assert g1[:5] == ["g1", "yes", "123456", "50", "80"]
    assert "block_ips: 198.51.100.0/24" in shown.stdout

    bad = flashsale(cfg, "bots", "set", "--admission-rate", "0")
    assert bad.returncode == EXIT_USAGE and "outside 0.1..100000" in bad.stderr

    assert flashsale(cfg, "bots", "unblock", "198.51.100.0/24").returncode == 0
    assert gateway_doc(cluster)["lists"]["block_ips"] == []

    # With the gateway down the change is recorded for the console, and the exit says so.
    cluster.kill_node("g1")
    down = flashsale(cfg, "bots", "allow", "--shopper", "vip-1")
    assert down.returncode == 1
    assert "g1: unreachable" in down.stdout and "sends it again" in down.stderr

    conn = open_store(admin_db_path(cluster.config.data_dir))
    try:
        wanted = bots_store.wanted(conn)
        rows = [(r.operator, r.action, r.target) for r in reversed(audit.recent(conn, 50))]
    finally:
        conn.close()
    assert wanted.settings == {"challenge_difficulty": 123_456, "block_score": 80}
    assert wanted.tombstones("block_ips") == {"198.51.100.0/24"}
    assert wanted.entries("allow_shoppers") == {"vip-1"}
    assert rows == [
        ("cli", "bots.list.add", "block_ips:198.51.100.0/24"),
        ("cli", "bots.settings", "gateways"),
        ("cli", "bots.list.remove", "block_ips:198.51.100.0/24"),
        ("cli", "bots.list.add", "allow_shoppers:vip-1"),
    ]
