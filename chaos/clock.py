"""Clock skew for one chaos node: its wall clock runs ahead or behind, via libfaketime.

Theory of operation: the leader stamps every Raft entry with its wall-clock time
(``at_ms``), and the ledger keeps its own time as the running maximum of those stamps;
holds and unpaid orders expire in that ledger time. A node whose wall clock is off
(a machine whose NTP went wrong) is therefore the clock fault that matters: while it
leads, ledger time jumps ahead (a positive offset: older deadlines all pass at once) or
stands still (a negative offset: the ledger keeps the maximum, so time waits for the
skewed clock to catch up, and holds outlive their deadline in wall time).

The node runs under libfaketime, preloaded into the process itself (``LD_PRELOAD`` of
``libfaketimeMT.so.1`` with ``FAKETIME="+30s"``), not through the ``faketime`` wrapper,
which forks: a SIGKILL to the wrapper would miss the node. The monotonic clock is left
real (``FAKETIME_DONT_FAKE_MONOTONIC=1``): pysyncobj times heartbeats and elections
with it, a machine's monotonic clock only drifts by parts per million, and libfaketime
would otherwise shift it to the faked wall time (a meaningless jump) or, with a rate
such as ``x1.5``, just shorten every Raft timeout, which is a configuration change
rather than a clock fault. Faking it is not an option either: with a faked monotonic
clock, Python's timed lock waits (``threading.Event().wait(0.3)``) never return under
libfaketime 0.9.10.

Leaving it real has one cost, which ``patch_sleep`` pays: with
``FAKETIME_DONT_FAKE_MONOTONIC=1``, libfaketime 0.9.10 answers Python's ``time.sleep``
(``clock_nanosleep`` on the monotonic clock, absolute) with EINVAL. A skewed chaos node
(``chaos.routed_node``) therefore sleeps with ``select`` instead.
"""

from __future__ import annotations

import glob
import operator
import os
import select
import time
from pathlib import Path
from typing import SupportsIndex

LIBRARY_NAME = "libfaketimeMT.so.1"
SEARCH = (
    "/usr/lib/x86_64-linux-gnu/faketime",
    "/usr/lib/aarch64-linux-gnu/faketime",
    "/usr/lib/*/faketime",
    "/usr/lib/faketime",
    "/usr/local/lib/faketime",
)
INSTALL_HINT = "apt-get install faketime (Debian's libfaketime)"


def faketime_library() -> Path | None:
    """Where libfaketime's multi-threaded library is, or None when it is not installed."""
    for pattern in SEARCH:
        for folder in sorted(glob.glob(pattern)):
            candidate = Path(folder) / LIBRARY_NAME
            if candidate.is_file():
                return candidate
    return None


def skew_env(library: Path, offset_s: int) -> dict[str, str]:
    """Environment for a process whose wall clock is ``offset_s`` seconds off."""
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"{offset_s:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def patch_sleep() -> None:
    """Make ``time.sleep`` work under libfaketime with a real monotonic clock (module doc):
    in a process that has ``FAKETIME`` set, sleep with ``select`` instead."""
    if not os.environ.get("FAKETIME"):
        return

    def sleep(secs: float | SupportsIndex) -> None:
        seconds = float(secs) if isinstance(secs, float) else float(operator.index(secs))
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)

    time.sleep = sleep
