"""cluster.supervisor: children start, crash and restart, and never outlive a stop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.supervisor import ChildSpec, Supervisor

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 20.0

# A child process for these tests. Modes: sleep, fork (leaves a grandchild in its group),
# crash-once (exits 3 on its first run), stubborn (ignores SIGTERM), record (appends its
# name to ./stops when SIGTERMed). Every run writes its pid to ./<name>.pid.
CHILD = r"""
import os, signal, subprocess, sys, time
from cluster.supervisor import die_with_parent
mode, name, where = sys.argv[1], sys.argv[2], sys.argv[3]
die_with_parent()
if mode == "crash-once" and not os.path.exists(os.path.join(where, name + ".crashed")):
    open(os.path.join(where, name + ".crashed"), "w").close()
    sys.exit(3)
if mode == "fork":
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.path.join(where, name + ".grandchild"), "w") as f:
        f.write(str(grandchild.pid))
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "record":
    def on_term(signum, frame):
        with open(os.path.join(where, "stops"), "a") as f:
            f.write(name + "\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
with open(os.path.join(where, name + ".pid"), "w") as f:
    f.write(str(os.getpid()))  # last: a test that sees it knows the handlers are in place
time.sleep(600)
"""

RUNNER = r"""
import asyncio, json, sys
from pathlib import Path
from cluster.supervisor import ChildSpec, Supervisor
specs = [ChildSpec(s["name"], tuple(s["argv"]), Path(s["log"]), s.get("tier", 0))
         for s in json.loads(sys.argv[1])]
async def main() -> None:
    sup = Supervisor(specs, grace_s=float(sys.argv[2]), backoff_first_s=0.1)
    await sup.run_until_signal()
asyncio.run(main())
"""


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
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text else None


@pytest.fixture
def pids_to_kill() -> Iterator[list[int]]:
    """Every pid a test learns of; SIGKILLed at the end whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def child_spec(tmp_path: Path, mode: str, name: str, tier: int = 0) -> ChildSpec:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    argv = (sys.executable, str(script), mode, name, str(tmp_path))
    return ChildSpec(name, argv, tmp_path / "logs" / f"{name}.log", tier)


def start_runner(tmp_path: Path, specs: list[ChildSpec], grace_s: float) -> subprocess.Popen[str]:
    payload = json.dumps(
        [
            {"name": s.name, "argv": list(s.argv), "log": str(s.log_path), "tier": s.tier}
            for s in specs
        ]
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, payload, str(grace_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def test_sigterm_to_the_supervisor_stops_every_child_and_grandchild(
    tmp_path: Path, pids_to_kill: list[int]
) -> None:
    specs = [
        child_spec(tmp_path, "sleep", "a"),
        child_spec(tmp_path, "fork", "b"),
        child_spec(tmp_path, "stubborn", "c", tier=1),
    ]
    runner = start_runner(tmp_path, specs, grace_s=1.0)
    pids_to_kill.append(runner.pid)
    files = [tmp_path / "a.pid", tmp_path / "b.pid", tmp_path / "c.pid", tmp_path / "b.grandchild"]
    wait_until(lambda: all(read_pid(f) for f in files), "every child to write its pid")
    pids = [p for f in files if (p := read_pid(f)) is not None]
    pids_to_kill.extend(pids)
    assert all(alive(p) for p in pids)

    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=DEADLINE_S)
    assert runner.returncode == 0, output
    wait_until(lambda: not any(alive(p) for p in pids), "every child pid to be gone")
    assert "c ignored SIGTERM" in output, output


def test_sigkill_of_the_supervisor_still_ends_its_children(
    tmp_path: Path, pids_to_kill: list[int]
) -> None:
    specs = [child_spec(tmp_path, "sleep", "a"), child_spec(tmp_path, "sleep", "b")]
    runner = start_runner(tmp_path, specs, grace_s=1.0)
    pids_to_kill.append(runner.pid)
    files = [tmp_path / "a.pid", tmp_path / "b.pid"]
    wait_until(lambda: all(read_pid(f) for f in files), "both children to start")
    pids = [p for f in files if (p := read_pid(f)) is not None]
    pids_to_kill.extend(pids)

    runner.kill()
    runner.communicate(timeout=DEADLINE_S)
    wait_until(lambda: not any(alive(p) for p in pids), "orphaned children to exit")


async def test_a_crashed_child_is_restarted(tmp_path: Path, pids_to_kill: list[int]) -> None:
    out = io.StringIO()
    spec = child_spec(tmp_path, "crash-once", "a")
    sup = Supervisor([spec], out=out, grace_s=2.0, backoff_first_s=0.1)
    await sup.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while sup.starts()["a"] < 2 or "a" not in sup.pids():
            assert time.monotonic() < deadline, out.getvalue()
            await asyncio.sleep(0.05)
        pid = sup.pids()["a"]
        pids_to_kill.append(pid)
        assert alive(pid)
        assert "a exited (code 3)" in out.getvalue()
        log = [json.loads(line) for line in spec.log_path.read_text().splitlines()]
        assert [r["msg"] for r in log if r["proc"] == "supervisor"] == [
            "started",
            "exited",
            "started",
        ]
    finally:
        await sup.stop()
    assert not alive(pid)
    assert sup.pids() == {}


async def test_higher_tiers_stop_before_lower_ones(tmp_path: Path, pids_to_kill: list[int]) -> None:
    specs = [
        child_spec(tmp_path, "record", "node", tier=0),
        child_spec(tmp_path, "record", "gateway", tier=1),
    ]
    sup = Supervisor(specs, out=io.StringIO(), grace_s=5.0)
    await sup.start()
    try:
        pids_to_kill.extend(sup.pids().values())
        wait_until(
            lambda: all(read_pid(tmp_path / f"{s.name}.pid") for s in specs),
            "both children to install their SIGTERM handler",
        )
    finally:
        await sup.stop()
    assert (tmp_path / "stops").read_text().split() == ["gateway", "node"]


async def test_a_child_that_cannot_start_is_retried_not_fatal(tmp_path: Path) -> None:
    out = io.StringIO()
    spec = ChildSpec("ghost", (str(tmp_path / "no-such-program"),), tmp_path / "ghost.log")
    sup = Supervisor([spec], out=out, backoff_first_s=0.05)
    await sup.start()
    await asyncio.sleep(0)
    await sup.stop()
    assert "ghost could not start" in out.getvalue()
    assert sup.starts() == {"ghost": 0}


def test_child_names_are_unique(tmp_path: Path) -> None:
    spec = ChildSpec("a", ("true",), tmp_path / "a.log")
    with pytest.raises(ValueError, match="unique"):
        Supervisor([spec, spec])


async def test_each_running_child_has_a_pid_file_that_follows_restarts(
    tmp_path: Path, pids_to_kill: list[int]
) -> None:
    # A chaos run against `flashsale up` signals children by these files (chaos.target).
    spec = child_spec(tmp_path, "sleep", "a")
    pid_file = tmp_path / "run" / "a.pid"
    sup = Supervisor([spec], out=io.StringIO(), grace_s=2.0, backoff_first_s=0.1,
                     pid_dir=tmp_path / "run")
    await sup.start()
    try:
        assert sup.pid_path("a") == pid_file
        first = sup.pids()["a"]
        pids_to_kill.append(first)
        assert int(pid_file.read_text()) == first
        os.killpg(first, signal.SIGKILL)  # a crash: the supervisor restarts the child
        deadline = time.monotonic() + DEADLINE_S
        while read_pid(pid_file) in (None, first) or "a" not in sup.pids():
            assert time.monotonic() < deadline, "no restart published"
            await asyncio.sleep(0.05)
        second = sup.pids()["a"]
        pids_to_kill.append(second)
        assert int(pid_file.read_text()) == second != first
    finally:
        await sup.stop()
    assert not pid_file.exists(), "a clean stop leaves no pid file naming a dead process"
    assert not alive(second)
