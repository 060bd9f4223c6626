"""``flashsale chaos run``: its arguments, and the refusal of a scenario that does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import build_parser, cmd_chaos_run, main


def test_chaos_run_takes_scenario_duration_seed_and_output() -> None:
    args = build_parser().parse_args(
        ["chaos", "run", "--scenario", "pause", "--duration", "30", "--seed", "3",
         "--out", "runs/x"]
    )
    assert args.handler is cmd_chaos_run
    assert (args.scenario, args.duration, args.seed, args.out) == ("pause", 30, 3, Path("runs/x"))


def test_chaos_run_defaults_to_three_minutes_of_mixed_with_a_fresh_seed() -> None:
    args = build_parser().parse_args(["chaos", "run"])
    assert (args.scenario, args.duration, args.seed, args.out) == ("mixed", 180, None, None)


def test_an_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "run", "--scenario", "meteor-strike"]) == 2
    err = capsys.readouterr().err
    assert "meteor-strike" in err and "leader-kill" in err


@pytest.mark.parametrize("duration", ["4", "0", "-1", "soon"])
def test_a_duration_out_of_bounds_is_a_usage_error(duration: str) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["chaos", "run", "--duration", duration])
    assert exc.value.code == 2


def test_chaos_run_can_target_the_running_cluster_of_a_config() -> None:
    args = build_parser().parse_args(["chaos", "run", "--target", "--config", "prod.toml"])
    assert args.target and args.config == "prod.toml"
    assert not build_parser().parse_args(["chaos", "run"]).target


def test_a_target_run_refuses_a_scenario_without_process_faults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It owns no link, disk or clock of the cluster: only kills and pauses by pid.
    for scenario in ("partition-leader", "delay", "slow-disk", "clock-skew"):
        assert main(["chaos", "run", "--target", "--scenario", scenario]) == 2
        assert "--target injects only kills and pauses" in capsys.readouterr().err


def test_a_target_run_with_a_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    code = main(["chaos", "run", "--target", "--config", str(tmp_path / "none.toml"),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert not (tmp_path / "run").exists()
