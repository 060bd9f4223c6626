"""[payments] in cluster.toml, `flashsale payments-sandbox`, and `flashsale up` starting it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from cli import up
from cli.main import build_parser, effective_config
from cluster.config import ConfigError, PaymentsConfig, build_config, load_config
from payments.service import build_providers
from tests.support.cluster import free_ports

ROOT = Path(__file__).resolve().parent.parent


def config(tmp_path: Path, payments: dict[str, Any], mode: str = "development") -> Any:
    secret = "x" * 40
    ports = free_ports(4)
    data = {
        "cluster": {"secret": secret, "data_dir": str(tmp_path / "var"), "mode": mode},
        "nodes": [{"id": "n1", "raft": f"127.0.0.1:{ports[0]}", "api": f"127.0.0.1:{ports[1]}"}],
        "gateways": [{"id": "g1", "listen": f"127.0.0.1:{ports[2]}"}],
        "bots": {"enabled": False},
        "admin": {"listen": f"127.0.0.1:{ports[3]}"},
        "payments": payments,
    }
    if mode == "production":
        data["pii"] = {"master_keys": {"k": "A" * 43 + "="}, "active_key": "k"}
    return build_config(data, tmp_path, tmp_path / "cluster.toml")


def test_the_shipped_config_runs_both_providers_against_the_sandbox() -> None:
    c = load_config(ROOT / "cluster.toml", env={})
    p = c.payments
    assert p.providers == ("stripe", "paypal")
    assert p.sandbox_listen is not None
    assert p.stripe_api_base == p.paypal_api_base == p.sandbox_listen.url
    assert p.sandbox_webhook_url.startswith(c.gateways[0].listen.url)


def test_without_a_payments_section_nothing_is_configured(tmp_path: Path) -> None:
    assert config(tmp_path, {}).payments == PaymentsConfig()
    assert PaymentsConfig().providers == ()


def test_environment_overrides_reach_payments_keys() -> None:
    env = {"FLASHSALE_PAYMENTS__PROVIDERS": "paypal,stripe",
           "FLASHSALE_PAYMENTS__CHARGE_TIMEOUT_MS": "2500",
           "FLASHSALE_PAYMENTS__STRIPE_API_KEY": "sk_live_from_env"}
    p = load_config(ROOT / "cluster.toml", env=env).payments
    assert p.providers == ("paypal", "stripe")
    assert p.charge_timeout_ms == 2500
    assert p.stripe_api_key.reveal() == "sk_live_from_env"


@pytest.mark.parametrize(("payments", "message"), [
    ({"providers": ["acme"]}, "unknown provider 'acme'"),
    ({"providers": ["stripe", "stripe"]}, "duplicate payments provider"),
    ({"charge_timeout_ms": 50}, "charge_timeout_ms=50"),
    ({"charge_timeout_ms": 10**6}, "at most 120000"),
    ({"sandbox_decline_rate": 1.5}, "sandbox_decline_rate"),
    ({"stripe_api_base": "ftp://x"}, "stripe_api_base"),
    ({"sandbox_listen": "nowhere"}, "payments.sandbox_listen"),
])
def test_bad_payments_settings_are_refused_by_name(
    tmp_path: Path, payments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(tmp_path, payments)


def test_production_refuses_the_sandbox_credentials(tmp_path: Path) -> None:
    dev = config(tmp_path, {"providers": ["stripe"]}, mode="production")
    with pytest.raises(ConfigError, match="development sandbox credentials"):
        build_providers(dev)
    ok = config(tmp_path, {"providers": ["stripe"], "stripe_api_key": "sk_live_real"},
                mode="production")
    assert [p.name for p in build_providers(ok)] == ["stripe"]
    assert build_providers(config(tmp_path, {"providers": ["paypal", "stripe"]}))[0].name \
        == "paypal"


def test_secrets_never_show_in_config_check_or_reprs(tmp_path: Path) -> None:
    c = config(tmp_path, {"providers": ["stripe", "paypal"], "stripe_api_key": "sk_live_SECRET",
                          "paypal_client_secret": "PP_SECRET", "stripe_webhook_secret": "whsec_S"})
    text = json.dumps(effective_config(c), default=str) + repr(c)
    for secret in ("sk_live_SECRET", "PP_SECRET", "whsec_S"):
        assert secret not in text
    assert "<hidden>" in text


def test_up_runs_the_sandbox_when_the_config_gives_it_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "module_present", lambda name: True)
    listen = "127.0.0.2:9"  # an address no other part of the config uses
    c = config(tmp_path, {"providers": ["stripe"], "sandbox_listen": listen})
    parts, _ = up.plan(c, tmp_path / "cluster.toml")
    sandbox = [p for p in parts if p.spec.name == "payments-sandbox"]
    assert len(sandbox) == 1
    assert sandbox[0].spec.argv == (sys.executable, "-m", "cli", "payments-sandbox",
                                    "--config", str(tmp_path / "cluster.toml"))
    assert sandbox[0].spec.tier == up.NODE_TIER, "gateways stop before their provider"
    assert str(sandbox[0].listens[0]) == listen
    without = config(tmp_path, {"providers": ["stripe"]})
    assert "payments-sandbox" not in [p.spec.name for p in up.plan(without, tmp_path)[0]]


def test_the_cli_has_a_payments_sandbox_command(tmp_path: Path) -> None:
    args = build_parser().parse_args(["payments-sandbox", "--config", "x.toml"])
    assert args.config == "x.toml" and args.handler.__name__ == "cmd_payments_sandbox"
