"""The raw pysyncobj commit rate: the ceiling of unbatched Raft on this machine.

Three processes, each a bare ``SyncObj`` holding one replicated counter: no journal, no
ledger, no HTTP, every command its own log entry (``appendEntriesUseBatch = False``, as
the nodes run it). The process that wins the election keeps ``concurrency`` increments
outstanding (each completion issues the next from pysyncobj's own thread) and counts the
commits in a window, at each level of concurrency; it writes the result as JSON and the
harness kills all three by pid.

``run_raft_ceiling`` starts and stops the processes; ``python -m
loadtests.harness.raft_ceiling --self A --partners B,C --out FILE`` is one of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests.harness.stats import percentile

ELECTION_WAIT_S = 30.0  # a leader must be elected within this
DRAIN_S = 0.5  # after a window, outstanding commands finish before the next level
TICK_S = 0.01  # poll wait of pysyncobj's tick thread, as the nodes use


@dataclass(frozen=True)
class CeilingStep:
    """Commits of one level of concurrency."""

    concurrency: int
    seconds: float
    commits: int
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def counter_class() -> type:
    """A bare ``SyncObj`` with one replicated counter: ``Counter(me, partners,
    password=None)``, ``incr()``, ``value``. No password is the raw ceiling (pysyncobj as
    shipped: no encryption); tests set one, as the nodes do."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, partners: list[str], password: str | None = None) -> None:
            conf = SyncObjConf(
                autoTick=True,
                autoTickPeriod=TICK_S,
                appendEntriesUseBatch=False,  # one entry per message, sent at once
                commandsQueueSize=1_000_000,
                dynamicMembershipChange=False,
                password=password,
            )
            super().__init__(me, partners, conf)
            self.value = 0

        @replicated  # type: ignore[untyped-decorator]
        def incr(self) -> int:
            self.value += 1
            return self.value

    return Counter


def _drive(counter: object, concurrency: int, seconds: float) -> CeilingStep:
    """Keep ``concurrency`` increments in flight for ``seconds``; count the commits."""
    from pysyncobj.config import FAIL_REASON

    latencies: list[float] = []
    commits = 0
    window = [float("inf"), float("inf")]  # [from, until], set once all are issued
    stopping = False

    def issue() -> None:
        started = time.perf_counter()

        def done(_result: object, error: int) -> None:
            nonlocal commits
            now = time.perf_counter()
            if error == FAIL_REASON.SUCCESS and window[0] <= now < window[1]:
                commits += 1
                latencies.append(now - started)
            if not stopping:
                issue()

        counter.incr(callback=done)  # type: ignore[attr-defined]

    for _ in range(concurrency):
        issue()
    time.sleep(0.3)  # warm-up: the queue fills, the followers catch up
    start = time.perf_counter()
    window[0], window[1] = start, start + seconds
    time.sleep(seconds + 0.05)
    stopping = True
    time.sleep(DRAIN_S)
    ordered = sorted(latencies)
    return CeilingStep(concurrency, seconds, commits, commits / seconds,
                       percentile(ordered, 0.50) * 1000, percentile(ordered, 0.95) * 1000,
                       percentile(ordered, 0.99) * 1000)  # fmt: skip


def serve(me: str, partners: list[str], levels: Sequence[int], seconds: float, out: Path) -> None:
    """One process of the ceiling cluster; the leader drives and writes ``out``."""
    counter = counter_class()(me, partners)
    deadline = time.monotonic() + ELECTION_WAIT_S
    while time.monotonic() < deadline:
        if counter._isReady() and counter._getLeader() is not None:
            break
        time.sleep(0.05)
    while True:  # followers idle here until they are killed
        if counter._isLeader():
            steps = [_drive(counter, c, seconds) for c in levels]
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps([asdict(s) for s in steps]))
            tmp.rename(out)
            while True:
                time.sleep(1.0)
        time.sleep(0.05)


def run_raft_ceiling(
    ports: Sequence[int], levels: Sequence[int], seconds: float, directory: Path,
    log: Path,
) -> list[CeilingStep]:  # fmt: skip
    """Start the 3 processes, wait for the leader's numbers, kill all 3 (by pid)."""
    addrs = [f"127.0.0.1:{p}" for p in ports]
    out = directory / "raft_ceiling.json"
    out.unlink(missing_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    budget = ELECTION_WAIT_S + len(levels) * (seconds + 0.3 + DRAIN_S + 0.1) + 30
    try:
        with open(log, "ab") as sink:
            for addr in addrs:
                partners = ",".join(a for a in addrs if a != addr)
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "loadtests.harness.raft_ceiling", "--self", addr,
                     "--partners", partners, "--levels", ",".join(map(str, levels)),
                     "--seconds", str(seconds), "--out", str(out)],
                    stdout=sink, stderr=subprocess.STDOUT,
                ))  # fmt: skip
        deadline = time.monotonic() + budget
        while not out.exists():
            dead = [p.returncode for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a raft-ceiling process exited ({dead}); see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"raft ceiling gave no numbers in {budget:.0f} s; see {log}")
            time.sleep(0.1)
        return [CeilingStep(**step) for step in json.loads(out.read_text())]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in procs:
            proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.harness.raft_ceiling")
    parser.add_argument("--self", dest="me", required=True)
    parser.add_argument("--partners", required=True)
    parser.add_argument("--levels", default="8,32,128,512")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    serve(args.me, args.partners.split(","), levels, args.seconds, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
