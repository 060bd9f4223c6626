"""The `flashsale` command line: bad input is one clear line and exit 2; no leader is 1."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import build_parser, cmd_admin, cmd_admin_create_operator, main

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A valid config whose nodes listen nowhere (every port free)."""
    nodes = "".join(
        f'[[nodes]]\nid = "n{i}"\nraft = "127.0.0.1:{free_port()}"\n'
        f'api = "127.0.0.1:{free_port()}"\n'
        for i in (1, 2, 3)
    )
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[cluster]\nsecret = "a-test-secret"\n{nodes}[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    return path


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that argparse must refuse; its one stderr line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["product", "add", "--id", "p"], "required: --name, --price, --stock"),
        (
            ["product", "add", "--id", "p", "--name", "n", "--price", "19,99", "--stock", "1"],
            "decimal amount",
        ),
        (
            ["product", "add", "--id", "p", "--name", "n", "--price", "1", "--stock", "-1"],
            "outside 0..1000000000",
        ),
        (
            ["product", "add", "--id", "p", "--name", "n", "--price", "1", "--stock", "x"],
            "not a whole number",
        ),
        (
            [
                "product",
                "add",
                "--id",
                "p",
                "--name",
                "n",
                "--price",
                "1",
                "--stock",
                "1",
                "--opens",
                "2025-11-28T09:00",
            ],
            "UTC offset",
        ),
        (
            [
                "product",
                "add",
                "--id",
                "p",
                "--name",
                "n",
                "--price",
                "1",
                "--stock",
                "1",
                "--currency",
                "dollars",
            ],
            "ISO 4217",
        ),
        (
            ["product", "add", "--id", "x" * 129, "--name", "n", "--price", "1", "--stock", "1"],
            "1..128 characters",
        ),
        (["product", "restock", "--id", "p"], "required: --quantity"),
        (
            [
                "product",
                "add",
                "--id",
                "p",
                "--name",
                "n",
                "--price",
                "1",
                "--stock",
                "1",
                "--hold-seconds",
                "0",
            ],
            "outside 1..604800",
        ),
        (["token", "alice", "--ttl-seconds", "0"], "outside 1.."),
        (["launch"], "invalid choice: 'launch'"),
        ([], "required: COMMAND"),
        (["product"], "required: ACTION"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert complaint in usage_error(argv, capsys)


def test_a_missing_config_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert err == f"flashsale: config error: config file '{tmp_path / 'none.toml'}' not found\n"


def test_a_bad_override_is_exit_2_naming_key_and_value(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASHSALE_RAFT__COMMIT_TIMEOUT_MS", "soon")
    assert main(["config", "check", "--config", str(config_path)]) == 2
    assert "raft.commit_timeout_ms='soon'" in capsys.readouterr().err


def test_an_unknown_node_id_is_exit_2(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "n9", "--config", str(config_path)]) == 2
    assert "no node 'n9'" in capsys.readouterr().err


def test_contradicting_update_flags_are_exit_2(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["product", "update", "--id", "p", "--opens", "now", "--always-open"]
    assert main([*argv, "--config", str(config_path)]) == 2
    assert "--opens and --always-open contradict" in capsys.readouterr().err


def test_a_price_finer_than_the_currency_is_exit_2_before_any_request(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["product", "add", "--id", "p", "--name", "n", "--price", "1.999", "--stock", "1"]
    assert main([*argv, "--config", str(config_path)]) == 2
    assert capsys.readouterr().err == "flashsale: price 1.999: USD has 2 decimal places\n"


def test_config_check_prints_the_effective_config_without_the_secret(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASHSALE_RAFT__COMMIT_TIMEOUT_MS", "777")
    assert main(["config", "check", "--config", str(config_path)]) == 0
    out = capsys.readouterr()
    effective = json.loads(out.out)
    assert effective["raft"]["commit_timeout_ms"] == 777
    assert effective["data_dir"] == str(config_path.parent / "var")
    assert "a-test-secret" not in out.out
    assert effective["secret"] == "<set, 13 characters>"
    assert "config OK" in out.err


def test_status_without_a_running_cluster_is_exit_1(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(config_path)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "no leader (0/3 nodes answering)"
    assert out.count("down") == 3


def test_a_write_without_a_cluster_fails_with_one_line(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cli.products.SUBMIT_DEADLINE_S", 0.3)
    argv = ["product", "restock", "--id", "p", "--quantity", "3"]
    assert main([*argv, "--config", str(config_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flashsale: NoLeader: ") and err.count("\n") == 1


def test_token_issues_a_shopper_token(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "alice", "--ttl-seconds", "60", "--config", str(config_path)]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["token", "bad user!", "--config", str(config_path)]) == 2
    assert "bad user!" in capsys.readouterr().err


def test_python_dash_m_cli_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0
    assert "usage: flashsale" in done.stdout
    for command in ("up", "node", "gateway", "admin", "status", "product", "token", "config"):
        assert command in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["admin", "--config", "x.toml", "create-operator", "bob"],
        ["admin", "create-operator", "bob", "--config", "x.toml"],
    ],
)
def test_config_is_kept_wherever_it_comes_in_a_nested_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.config == "x.toml"
    assert args.handler is cmd_admin_create_operator
    assert (args.username, args.rights) == ("bob", "operator")


def test_admin_without_an_action_serves_the_console() -> None:
    args = build_parser().parse_args(["admin", "--config", "x.toml"])
    assert args.handler is cmd_admin and args.config == "x.toml"
    assert build_parser().parse_args(["admin"]).config == "cluster.toml"


def test_creating_a_console_account_from_the_command_line(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Correct-Horse-Battery-9\n"))
    argv = ["admin", "create-operator", "bob", "--password-stdin", "--config", str(config_path)]
    assert main(argv) == 0
    assert "created operator 'bob'" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("Correct-Horse-Battery-9\n"))
    assert main(argv) == 1, "the same name twice is refused"
