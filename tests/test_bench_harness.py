"""``make bench`` in its quick mode: every load and every ceiling gets its row, every
answer is the one the load expects, and the sale stays exact. No speed is asserted here
(figures belong in docs/BENCHMARKS.md): only that the harness measures what it claims.

Runs the real thing as a subprocess (3 nodes, a gateway, the payments sandbox, the bare
server, 3 pysyncobj processes, redis-benchmark against the local Redis, wrk), and checks
that nothing it started outlives it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests import bench_harness
from loadtests.harness.report import BEGIN, END, replace_block

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
LOADS = {
    "inventory reads": {"gateway x1", "bare aiohttp"},
    "reserve after sell-out": {"gateway x1", "bare aiohttp"},
    "reserve before sell-out": {"gateway x1"},
    "reserve before sell-out, batching off": {"gateway x1, max_batch 1"},
    "checkout+payment": {"gateway x1 + sandbox"},
    "checkout+payment: checkout alone": {"gateway x1"},
    "checkout+payment: payment alone": {"gateway x1 + sandbox"},
    "scaling: inventory reads": {"gateways x1"},
    "scaling: reserve before sell-out": {"gateways x1"},
    "raw commits, 1 command per entry": {"pysyncobj, 3 processes"},
    "Lua decrement (EVALSHA)": {"one Redis 7"},
}
HARNESS_TIMEOUT_S = 100


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (make bench does)")
@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark missing")
def test_quick_bench_reports_every_row_and_no_oversold_unit(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\nprose before\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    # Every process of the run gets a path under here on its command line (its config,
    # its answers file): how the test finds any that were left behind.
    work = tmp_path / "work"
    work.mkdir()
    env["TMPDIR"] = str(work)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench_harness", "--quick", "--json", str(out),
         "--docs", str(docs)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        stdout, _ = proc.communicate(timeout=HARNESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stdout[-4000:]
    report = json.loads(out.read_text())
    seen: dict[str, set[str]] = {}
    for row in report["rows"]:
        seen.setdefault(row["load"], set()).add(row["server"])
        assert row["expected"], row  # e.g. every sold-out attempt answered 409, each reserve 200
        assert row["requests"] > 0, row
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
    assert seen == LOADS
    assert report["oversold"] == 0
    assert report["problems"] == []
    assert any("oversold units: 0" in line for line in report["exactness"])
    # The table went into the document between the markers, after the prose.
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nprose before\n")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "| inventory reads | gateway x1 | 32 |" in text
    # Nothing the harness started is left running.
    assert _processes_mentioning(str(work)) == []


def test_a_rerun_replaces_the_block_between_the_markers() -> None:
    doc = replace_block("# B\n\nbefore\n", "first")
    assert doc.count(BEGIN) == 1 and "first" in doc
    again = replace_block(doc + "\nafter\n", "second")
    assert "first" not in again and "second" in again
    assert again.startswith("# B\n\nbefore\n") and again.endswith("\nafter\n")
    assert again.count(BEGIN) == 1 and again.count(END) == 1


def test_a_partial_run_names_known_loads_and_is_never_written_into_the_docs() -> None:
    assert bench_harness.parse_args(["--loads", "checkout,reads"]).loads == ("checkout", "reads")
    assert bench_harness.parse_args([]).loads == bench_harness.LOADS
    for argv in (["--loads", "reads,bogus"], ["--loads", "reads", "--docs", "BENCH.md"]):
        with pytest.raises(SystemExit):
            bench_harness.parse_args(argv)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores")
def test_own_core_pins_the_server_apart_and_restores_every_affinity() -> None:
    from loadtests.harness.machine import own_core

    cores = os.sched_getaffinity(0)
    # Two threads each, as a node (its Raft thread) or a gateway (its pools) has.
    threaded = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
    server = subprocess.Popen([sys.executable, "-c", threaded + "time.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", threaded + "time.sleep(60)"])

    def affinities(pid: int) -> set[frozenset[int]]:
        while len(tids := os.listdir(f"/proc/{pid}/task")) < 2:  # the thread is starting
            time.sleep(0.01)
        return {frozenset(os.sched_getaffinity(int(t))) for t in tids}

    try:
        affinities(server.pid), affinities(other.pid)
        with own_core([server.pid], [other.pid]) as pinned:
            assert pinned
            (own,) = affinities(server.pid)
            assert len(own) == 1
            assert affinities(other.pid) == {frozenset(cores - own)}
            # The client this process starts next (wrk) inherits the other cores.
            assert os.sched_getaffinity(0) == cores - own
        assert os.sched_getaffinity(0) == cores
        assert affinities(server.pid) == affinities(other.pid) == {frozenset(cores)}
    finally:
        for proc in (server, other):
            proc.kill()
            proc.wait()
