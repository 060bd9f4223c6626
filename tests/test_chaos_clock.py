"""A chaos node's skewed clock: libfaketime shifts the wall clock of one process only,
leaves its monotonic clock (pysyncobj's timers) real, and its sleeps still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.clock import INSTALL_HINT, faketime_library, skew_env

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, threading, time
from chaos.clock import patch_sleep
from pysyncobj.monotonic import monotonic
patch_sleep()
wall, mono, raft = time.time(), time.monotonic(), monotonic()
time.sleep(0.3)
threading.Event().wait(0.2)
print(json.dumps({"wall": wall, "mono_s": time.monotonic() - mono,
                  "raft_s": monotonic() - raft}))
"""


@pytest.mark.parametrize("offset_s", [30, -30])
def test_a_skewed_process_sees_a_shifted_wall_clock_and_true_intervals(offset_s: int) -> None:
    library = faketime_library()
    if library is None:
        pytest.skip(f"libfaketime is not installed: {INSTALL_HINT}")
    env = {**os.environ, **skew_env(library, offset_s)}
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=30, check=True,
    )
    seen = json.loads(out.stdout)
    assert abs(seen["wall"] - before - offset_s) < 5
    # Sleeps and timed waits last what they say, on the process's real monotonic clock,
    # which pysyncobj's election and heartbeat timers read.
    assert 0.45 <= seen["mono_s"] < 3
    assert 0.45 <= seen["raft_s"] < 3


def test_the_environment_names_the_library_and_leaves_monotonic_real() -> None:
    env = skew_env(Path("/usr/lib/x/libfaketimeMT.so.1"), -7)
    assert env == {
        "LD_PRELOAD": "/usr/lib/x/libfaketimeMT.so.1",
        "FAKETIME": "-7s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    assert skew_env(Path("/l.so"), 12)["FAKETIME"] == "+12s"
