"""The chaos slow disk: a control file slows every fsync of a chaos node, on and off while
it runs, and nothing of it reaches a production node."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.slow_disk import (
    CHECK_PERIOD_S,
    MAX_DELAY_MS,
    install_fsync_delay,
    parse_delay_ms,
    write_delay,
)

REPO = Path(__file__).resolve().parent.parent


def test_the_control_file_says_milliseconds_and_anything_else_means_no_delay() -> None:
    assert parse_delay_ms("250\n") == 250
    assert parse_delay_ms("") == 0
    assert parse_delay_ms("slow") == 0
    assert parse_delay_ms("-5") == 0
    assert parse_delay_ms(str(10 * MAX_DELAY_MS)) == MAX_DELAY_MS


def timed_fdatasync(path: Path) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"x")
        started = time.monotonic()
        os.fdatasync(fd)
        return time.monotonic() - started
    finally:
        os.close(fd)


def test_a_delay_written_while_the_process_runs_slows_each_fsync_until_it_is_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # monkeypatch puts the real functions back after the test.
    monkeypatch.setattr(os, "fsync", os.fsync)
    monkeypatch.setattr(os, "fdatasync", os.fdatasync)
    control = tmp_path / "n1.fsync-delay-ms"
    install_fsync_delay(control)
    data = tmp_path / "journal"
    assert timed_fdatasync(data) < 0.3, "no control file: no delay"
    write_delay(control, 400)
    time.sleep(CHECK_PERIOD_S * 1.5)  # read at most every 100 ms
    assert timed_fdatasync(data) >= 0.4
    fd = os.open(data, os.O_RDONLY)
    try:
        started = time.monotonic()
        os.fsync(fd)  # the term/vote file and dumps are synced with fsync: slowed too
        assert time.monotonic() - started >= 0.4
    finally:
        os.close(fd)
    write_delay(control, 0)
    time.sleep(CHECK_PERIOD_S * 1.5)
    assert timed_fdatasync(data) < 0.3
    assert data.read_bytes() == b"xxx", "the data is still synced for real"


def test_a_production_node_never_loads_the_slow_disk() -> None:
    # Only the chaos entry point (chaos.routed_node) installs it; `python -m node` and
    # `flashsale node` import nothing of it, whatever the environment says.
    env = {**os.environ, "CHAOS_FSYNC_DELAY_FILE": "/tmp/never-read"}
    code = (
        "import sys, node.__main__, cli.main; "
        "print(any(m.startswith('chaos') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
