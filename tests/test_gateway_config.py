"""The [gateway] section of cluster.toml (cluster.config.GatewaySettings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cluster.config import (
    ConfigError,
    GatewaySettings,
    apply_env_overrides,
    build_config,
    load_config,
)
from ledger.limits import MAX_COMMANDS_PER_ENTRY

REPO = Path(__file__).resolve().parent.parent


def _build(tmp_path: Path, gateway: dict[str, Any]) -> GatewaySettings:
    data = {
        "cluster": {"secret": "s"},
        "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
        "gateway": gateway,
    }
    return build_config(data, tmp_path).gateway_settings


def test_defaults_without_a_section(tmp_path: Path) -> None:
    assert _build(tmp_path, {}) == GatewaySettings()


def test_the_shipped_cluster_toml_sets_every_key() -> None:
    settings = load_config(REPO / "cluster.toml", env={}).gateway_settings
    assert settings.max_batch == 500 and settings.batch_window_ms == 2
    assert settings.tls_cert is None


def test_environment_overrides(tmp_path: Path) -> None:
    data = apply_env_overrides(
        {"gateway": {"max_batch": 500}}, {"FLASHSALE_GATEWAY__MAX_BATCH": "64"}
    )
    assert _build(tmp_path, data["gateway"]).max_batch == 64


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_batch", MAX_COMMANDS_PER_ENTRY + 1, "one ledger entry"),
        ("max_batch", 0, "integer >= 1"),
        ("batch_window_ms", -1, "integer >= 0"),
        ("queue_limit", 0, "integer >= 1"),
        ("max_in_flight_batches", 0, "integer >= 1"),
        ("request_deadline_ms", 10, "integer >= 100"),
        ("feed_wait_ms", 30_001, "30000"),
        ("token_ttl_s", "long", "integer"),
        ("loop_lag_tick_ms", 4, r"0 \(off\) or 5\.\.1000"),
        ("loop_lag_tick_ms", 1001, r"0 \(off\) or 5\.\.1000"),
    ],
)
def test_out_of_range_values_name_the_key(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _build(tmp_path, {key: value})
    assert f"gateway.{key}" in str(info.value)
