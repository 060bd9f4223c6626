"""cluster.toml parsing: every bad value is refused with its key and value named."""

from __future__ import annotations

import base64
import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cluster.config import (
    DEV_MASTER_KEY_B64,
    DEV_SECRET,
    ConfigError,
    apply_env_overrides,
    build_config,
    load_config,
    parse_hostport,
)

REPO = Path(__file__).resolve().parent.parent
STRONG_SECRET = "s" * 40
REAL_MASTER_KEY = base64.b64encode(bytes(range(32))).decode()  # not the development key


def shipped() -> dict[str, Any]:
    """The cluster.toml of the repository as raw data."""
    return tomllib.loads((REPO / "cluster.toml").read_text())


def build(data: dict[str, Any], base: Path = Path("/srv/flashsale")) -> Any:
    return build_config(data, base)


def with_value(section: str, key: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(shipped())
    data.setdefault(section, {})[key] = value
    return data


def test_the_shipped_config_is_valid() -> None:
    config = load_config(REPO / "cluster.toml", env={})
    assert [n.id for n in config.nodes] == ["n1", "n2", "n3"]
    assert config.node("n2").api.url == "http://127.0.0.1:7102"
    assert config.path == (REPO / "cluster.toml").resolve()


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("cluster", "mode", "staging"),
        ("cluster", "durability", "sometimes"),
        ("cluster", "name", ""),
        ("cluster", "secret", 42),
        ("raft", "commit_timeout_ms", 0),
        ("raft", "commit_timeout_ms", "soon"),
        ("raft", "election_timeout_min_ms", True),
        ("raft", "feed_retention_events", 5),
        ("ledger", "payment_ttl_s", -1),
        ("ledger", "retention_s", 1.5),
        ("admin", "listen", "localhost"),
        ("admin", "listen", "127.0.0.1:http"),
        ("admin", "listen", "127.0.0.1:70000"),
        ("storage", "url", "mysql://db"),
    ],
)
def test_a_bad_value_is_refused_naming_key_and_value(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        build(with_value(section, key, value))
    message = str(err.value)
    assert f"{section}.{key}" in message
    assert repr(value) in message or str(value) in message


def test_a_bad_node_address_names_the_node() -> None:
    data = shipped()
    data["nodes"][1]["api"] = "127.0.0.1"
    with pytest.raises(ConfigError, match=r"nodes\[n2\]\.api='127\.0\.0\.1'"):
        build(data)


def test_cross_field_checks_name_both_values() -> None:
    data = with_value("raft", "election_timeout_max_ms", 300)
    with pytest.raises(ConfigError, match=r"election_timeout_max_ms=300 .*min_ms=300"):
        build(data)
    data = with_value("raft", "append_entries_period_ms", 200)
    with pytest.raises(ConfigError, match="append_entries_period_ms=200"):
        build(data)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d["nodes"][1].update(id="n1"), "duplicate node id: 'n1'"),
        (lambda d: d["nodes"][1].update(api="127.0.0.1:7101"), "duplicate listen address"),
        (lambda d: d["admin"].update(listen="127.0.0.1:8080"), "'127.0.0.1:8080'"),
        (lambda d: d.update(nodes=[]), "at least one node"),
    ],
)
def test_duplicates_and_missing_nodes_are_refused(mutate: Any, pattern: str) -> None:
    data = shipped()
    mutate(data)
    with pytest.raises(ConfigError, match=pattern):
        build(data)


def test_production_mode_refuses_the_development_secret_without_printing_it() -> None:
    data = with_value("cluster", "mode", "production")
    with pytest.raises(ConfigError) as err:
        build(data)
    assert "cluster.secret" in str(err.value)
    assert DEV_SECRET not in str(err.value)
    data["cluster"]["secret"] = "short-but-not-default"
    with pytest.raises(ConfigError, match=r"cluster\.secret"):
        build(data)
    data["cluster"]["secret"] = STRONG_SECRET
    data["pii"] = {"master_keys": {"prod1": REAL_MASTER_KEY}, "active_key": "prod1"}
    assert build(data).mode == "production"


def test_production_mode_refuses_the_development_master_key_at_load() -> None:
    data = with_value("cluster", "mode", "production")
    data["cluster"]["secret"] = STRONG_SECRET
    with pytest.raises(ConfigError, match=r"pii\.master_keys\.dev is the public development key"):
        build(data)
    del data["pii"]  # no [pii] at all means the development key too
    with pytest.raises(ConfigError, match="development key") as err:
        build(data)
    assert DEV_MASTER_KEY_B64 not in str(err.value)
    # Listing it beside a real key is refused as well: it could still unwrap data keys.
    data["pii"] = {"master_keys": {"dev": DEV_MASTER_KEY_B64, "k1": REAL_MASTER_KEY},
                   "active_key": "k1"}
    with pytest.raises(ConfigError, match=r"pii\.master_keys\.dev"):
        build(data)


def test_development_mode_accepts_the_development_secret() -> None:
    assert build(shipped()).secret == DEV_SECRET


def test_environment_overrides_a_section_key_with_its_type() -> None:
    env = {
        "FLASHSALE_CLUSTER__SECRET": STRONG_SECRET,
        "FLASHSALE_CLUSTER__MODE": "production",
        "FLASHSALE_RAFT__COMMIT_TIMEOUT_MS": "1234",
        "FLASHSALE_PII__MASTER_KEYS": f"prod1={REAL_MASTER_KEY}",
        "FLASHSALE_PII__ACTIVE_KEY": "prod1",
    }
    config = load_config(REPO / "cluster.toml", env=env)
    assert config.secret == STRONG_SECRET
    assert config.mode == "production"
    assert config.raft.commit_timeout_ms == 1234
    assert [k.key_id for k in config.pii.master_keys] == ["prod1"]
    assert config.pii.active.secret == bytes(range(32))


def test_environment_overrides_a_key_the_file_leaves_at_its_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[cluster]\nsecret = "x"\n[[nodes]]\nid = "a"\nraft = "127.0.0.1:1"\napi = "127.0.0.1:2"\n'
    )
    config = load_config(path, env={"FLASHSALE_LEDGER__PAYMENT_TTL_S": "60"})
    assert config.ledger.payment_ttl_s == 60


def test_a_bad_environment_value_is_refused_naming_key_and_value() -> None:
    env = {"FLASHSALE_RAFT__COMMIT_TIMEOUT_MS": "soon"}
    with pytest.raises(ConfigError, match=r"raft\.commit_timeout_ms='soon'"):
        load_config(REPO / "cluster.toml", env=env)


def test_environment_overrides_one_list_entry_by_id() -> None:
    env = {
        "FLASHSALE_NODES__N2__API": "127.0.0.1:9102",
        "FLASHSALE_GATEWAYS__G1__LISTEN": "0.0.0.0:80",
    }
    config = load_config(REPO / "cluster.toml", env=env)
    assert str(config.node("n2").api) == "127.0.0.1:9102"
    assert str(config.node("n1").api) == "127.0.0.1:7101"
    assert str(config.gateway("g1").listen) == "0.0.0.0:80"


def test_an_override_of_an_unknown_entry_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FLASHSALE_NODES__N9__API: no nodes entry with id 'n9'"):
        apply_env_overrides(shipped(), {"FLASHSALE_NODES__N9__API": "127.0.0.1:1"})


def test_variables_outside_the_override_pattern_are_ignored() -> None:
    env = {"FLASHSALE_SUPERVISOR_PID": "123", "HOME": "/root", "FLASHSALEX__A": "1"}
    assert apply_env_overrides(shipped(), env) == shipped()


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "c.toml"
    path.parent.mkdir()
    path.write_text((REPO / "cluster.toml").read_text())
    config = load_config(path, env={})
    assert config.data_dir == tmp_path / "conf" / "var"
    assert config.storage.sqlite_path == tmp_path / "conf" / "var" / "orders.db"
    assert config.node_data_dir("n1") == tmp_path / "conf" / "var" / "nodes" / "n1"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = with_value("cluster", "data_dir", str(tmp_path / "data"))
    data["storage"]["url"] = f"sqlite:///{tmp_path}/o.db"
    config = build(data)
    assert config.data_dir == tmp_path / "data"
    assert config.storage.sqlite_path == tmp_path / "o.db"


def test_postgres_storage_is_not_a_sqlite_path() -> None:
    data = with_value("storage", "url", "postgresql://u@127.0.0.1:5432/test")
    config = build(data)
    assert not config.storage.is_sqlite
    with pytest.raises(ConfigError, match="not a sqlite URL"):
        _ = config.storage.sqlite_path


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[cluster\nname=")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config(broken, env={})


def test_lookup_of_an_unknown_node_or_gateway_lists_the_known_ones() -> None:
    config = build(shipped())
    with pytest.raises(ConfigError, match=r"no node 'n9'.*'n1', 'n2', 'n3'"):
        config.node("n9")
    with pytest.raises(ConfigError, match=r"no gateway 'g9'.*'g1'"):
        config.gateway("g9")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:80", "127.0.0.1", 80), ("[::1]:8080", "::1", 8080), ("h:65535", "h", 65535)],
)
def test_host_port_parsing(text: str, host: str, port: int) -> None:
    parsed = parse_hostport(text, "k")
    assert (parsed.host, parsed.port) == (host, port)
