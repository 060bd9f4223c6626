"""`flashsale up`: what it starts, what it skips, and busy ports refused up front."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from cli import up
from cli.failure import Failure
from cluster.config import ClusterConfig, build_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    tmp_path: Path, gateways: int = 1, snapshots: dict[str, Any] | None = None
) -> ClusterConfig:
    data: dict[str, Any] = {
        "cluster": {"secret": "x", "data_dir": str(tmp_path / "var")},
        "nodes": [
            {"id": f"n{i}", "raft": f"127.0.0.1:{free_port()}", "api": f"127.0.0.1:{free_port()}"}
            for i in (1, 2, 3)
        ],
        "gateways": [
            {"id": f"g{i}", "listen": f"127.0.0.1:{free_port()}"} for i in range(1, gateways + 1)
        ],
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "storage": {"url": "sqlite:///var/orders.db"},
        "snapshots": snapshots or {},
    }
    return build_config(data, tmp_path, tmp_path / "cluster.toml")


EVERY_SERVER = ("node.server", "snapshots.server", "gateway.server", "admin.server")


def present(*modules: str) -> object:
    return lambda name: name in modules


def test_every_part_runs_as_a_cli_child_with_its_own_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "module_present", present(*EVERY_SERVER))
    c = config(tmp_path, gateways=2)
    parts, skipped = up.plan(c, tmp_path / "cluster.toml")
    assert skipped == []
    assert [p.spec.name for p in parts] == ["n1", "n2", "n3", "snapshots", "g1", "g2", "admin"]
    n1 = parts[0].spec
    assert n1.argv == (
        sys.executable,
        "-m",
        "cli",
        "node",
        "n1",
        "--config",
        str(tmp_path / "cluster.toml"),
    )
    assert n1.log_path == tmp_path / "var" / "logs" / "n1.log"
    assert {p.spec.tier for p in parts[:3]} == {up.NODE_TIER}
    assert {p.spec.tier for p in parts[3:]} == {up.EDGE_TIER}, "edge stops before nodes"
    banner = up.banner(c, parts)
    assert f"shop     {c.gateways[0].listen.url}" in banner
    assert f"console  {c.admin.listen.url}" in banner
    assert f"orders   {tmp_path / 'var' / 'orders.db'}" in banner


def test_the_snapshot_writer_runs_after_the_nodes_and_stops_before_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "module_present", present(*EVERY_SERVER))
    listen = f"127.0.0.1:{free_port()}"
    c = config(tmp_path, snapshots={"listen": listen})
    parts, _ = up.plan(c, tmp_path / "cluster.toml")
    [writer] = [p for p in parts if p.spec.name == "snapshots"]
    assert parts.index(writer) == len(c.nodes), "started once the nodes are"
    assert writer.spec.argv == (
        sys.executable, "-m", "cli", "snapshots", "--config", str(tmp_path / "cluster.toml"),
    )  # fmt: skip
    assert writer.spec.log_path == tmp_path / "var" / "logs" / "snapshots.log"
    assert writer.spec.tier == up.EDGE_TIER, "it reads the nodes' feed: stops before them"
    assert [str(a) for a in writer.listens] == [listen], "its port is checked and awaited"
    assert writer.url == c.storage.url
    # Not a shop: the banner lists it as where the orders go.
    assert "shop" not in up.banner(c, [p for p in parts if p.spec.name != "g1"])


def test_a_missing_snapshot_writer_is_skipped_with_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        up, "module_present", present("node.server", "gateway.server", "admin.server")
    )
    c = config(tmp_path)
    parts, skipped = up.plan(c, tmp_path / "cluster.toml")
    assert "snapshots" not in [p.spec.name for p in parts]
    assert skipped == ["snapshots.server is not installed: orders are not written to storage"]
    assert "orders" not in up.banner(c, parts)


def test_a_postgresql_store_is_shown_without_its_password() -> None:
    assert up.store_label("postgresql://app:s3cret@db.internal:5432/shop") == (
        "postgresql://db.internal:5432/shop"
    )
    sqlite = "sqlite:////srv/flashsale/var/orders.db"
    assert up.store_label(sqlite) == "/srv/flashsale/var/orders.db"


def test_a_missing_console_is_skipped_with_a_line_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        up, "module_present", present("node.server", "gateway.server", "snapshots.server")
    )
    parts, skipped = up.plan(config(tmp_path), tmp_path / "cluster.toml")
    assert "admin" not in [p.spec.name for p in parts]
    assert skipped == ["admin.server is not installed: skipping the console"]


def test_without_a_node_module_nothing_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "module_present", present())
    with pytest.raises(Failure, match=r"node\.server is not installed"):
        up.plan(config(tmp_path), tmp_path / "cluster.toml")


def test_a_busy_port_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "module_present", present("node.server"))
    c = config(tmp_path, gateways=0)
    parts, skipped = up.plan(c, tmp_path / "cluster.toml")
    assert "no [[gateways]] in the config: no shop" in skipped
    up.check_ports_free(parts)
    with socket.socket() as busy:
        busy.bind((c.nodes[1].api.host, c.nodes[1].api.port))
        busy.listen()
        with pytest.raises(Failure, match=f"{c.nodes[1].api} \\(n2\\) is in use"):
            up.check_ports_free(parts)


def test_nodes_only_runs_just_the_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up, "module_present", present(*EVERY_SERVER))
    parts, skipped = up.plan(config(tmp_path), tmp_path / "cluster.toml", nodes_only=True)
    assert [p.spec.name for p in parts] == ["n1", "n2", "n3"]
    assert skipped == ["--nodes-only: no gateways, no console"]


def test_module_presence_is_checked_without_importing_a_missing_package() -> None:
    assert up.module_present("cluster.supervisor")
    assert not up.module_present("cluster.no_such_module")
    assert not up.module_present("no_such_package.server")
