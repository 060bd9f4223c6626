"""What the machine is, how busy it is, and which cores a measured process runs on."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def uptime() -> str:
    """``uptime``'s one line (load average included), or the load average alone."""
    if shutil.which("uptime"):
        done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
    return f"load average: {loadavg()}"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def describe() -> str:
    """One line: cores, CPU model, kernel, Python."""
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: utime and stime are the 12th and 13th fields (proc(5)).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (wrk, redis-benchmark) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def own_core(servers: Sequence[int], others: Sequence[int]) -> Iterator[bool]:
    """Run the processes ``servers`` (every thread) alone on one core, and ``others``
    and this thread (so the load generator it starts next, which inherits its affinity)
    on the remaining ones; every affinity is restored on exit. Yields False, pinning
    nothing, on a machine with one core. Why: "the bare handler's rate on the same core"
    compares one core's work, and a client sharing that core takes an unsteady part."""
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        yield False
        return
    own = {min(cores)}
    rest = cores - own
    pinned = [(0, rest), *((p, own) for p in servers), *((p, rest) for p in others)]
    try:
        for pid, cpus in pinned:
            _set_affinity(pid, cpus)
        yield True
    finally:
        for pid, _cpus in pinned:
            _set_affinity(pid, cores)


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` (a node's Raft thread, a gateway's thread pools:
    the call applies to one thread only); ``pid`` 0: the calling thread."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")] if pid else [0]
    except FileNotFoundError:  # a process that has exited
        return
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that has exited
            os.sched_setaffinity(tid, cpus)
