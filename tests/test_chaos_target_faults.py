"""``flashsale chaos run --target`` against a cluster run by ``flashsale up``: the run
kills and pauses the cluster's own processes by the pids ``flashsale up`` publishes in
``<data_dir>/run``, the supervisor restarts what was killed, and the checker finds every
promise kept.

The test starts ``flashsale up`` itself, as an operator would (a chaos cluster's
settings: short Raft timeouts, payments due in 6 s, gateways answering within 2.5 s),
and stops it at the end; every pid it saw is SIGKILLed on the way out whatever happened.
Seed 21 of ``mixed`` (its process faults) schedules, in 24 s, a leader kill, a follower
pause and a gateway kill.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.nemesis import PROCESS_FAULTS, FaultKind, schedule
from chaos.run import GATEWAY, LEDGER, RAFT, recheck, run_chaos
from chaos.scenarios import SCENARIOS
from chaos.target import SupervisedProcesses, alive
from chaos.topology import build_topology

SEED = 21
DURATION_S = 24
UP_TIMEOUT_S = 60.0


def test_a_stale_pid_file_naming_another_process_is_not_acted_on(tmp_path: Path) -> None:
    """A supervisor that died leaves pid files; the kernel may reuse their pids for
    anything. The nemesis must not kill an unrelated process group."""
    topology = build_topology(tmp_path / "cluster", n_nodes=1, n_gateways=1)
    processes = SupervisedProcesses(topology.config, tmp_path / "run")
    (tmp_path / "run").mkdir()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run" / "n1.pid").write_text(f"{stranger.pid}\n", encoding="ascii")
        assert processes.pid("n1") is None and processes.published() == []
        processes.kill("n1")
        processes.pause("n1")
        assert stranger.poll() is None and alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait(10)


def test_the_schedule_has_a_kill_and_a_pause() -> None:
    kinds = [f.kind for f in schedule(SCENARIOS["mixed"].mix.only(PROCESS_FAULTS), SEED,
                                      DURATION_S)]
    assert kinds[:2] == [FaultKind.KILL_LEADER, FaultKind.PAUSE_FOLLOWER]
    assert set(kinds) <= PROCESS_FAULTS


@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_a_target_run_kills_and_pauses_the_processes_of_flashsale_up(tmp_path: Path) -> None:
    topology = build_topology(tmp_path / "cluster", raft=RAFT, ledger=LEDGER, gateway=GATEWAY)
    processes = SupervisedProcesses(topology.config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--config", str(topology.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    seen: set[int] = set()
    names = [*topology.node_ids, *topology.gateway_ids]
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while set(processes.published()) != set(names):
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        first = {n: processes.pid(n) for n in names}
        seen.update(p for p in first.values() if p is not None)
        out = io.StringIO()
        code = run_chaos("mixed", DURATION_S, SEED, tmp_path / "run", say=out,
                         target=topology.config_path)
        report = json.loads((tmp_path / "run" / "report.json").read_text())
        now = {n: processes.pid(n) for n in names}
        seen.update(p for p in now.values() if p is not None)
        verdict = report["verdict"]
        assert code == 0, out.getvalue() + (tmp_path / "up.log").read_text()[-3000:]
        assert verdict["counts"]["violations"] == 0
        assert verdict["counts"]["acknowledged"] > 10
        assert report["nemesis"]["errors"] == []
        faults = [json.loads(line) for line in
                  (tmp_path / "run" / "history.jsonl").read_text().splitlines()
                  if '"type":"fault"' in line]
        begun = {f["op"] for f in faults if f["phase"] == "begin"}
        assert {"kill-leader", "pause-follower"} <= begun, faults
        assert verdict["counts"]["faults"] >= 2
        # The killed processes were restarted by flashsale up (a new pid, published), and
        # every process of the cluster runs at the end.
        killed = {t for f in faults if f["phase"] == "begin" and f["op"].startswith("kill")
                  for t in f["targets"]}
        assert killed and all(now[n] != first[n] for n in killed)
        assert all(report["nemesis"]["process_starts"][n] >= 1 for n in killed)
        assert all(now[n] is not None for n in names)
        assert any("process faults" in note for note in verdict["notes"])
        assert recheck(tmp_path / "run").ok
    finally:
        with contextlib.suppress(ProcessLookupError):
            up.send_signal(signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        for pid in seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    # A clean stop leaves no pid file behind and no process running.
    assert not any((processes.directory / f"{n}.pid").exists() for n in names)
    assert not any(alive(pid) for pid in seen)
