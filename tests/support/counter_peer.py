"""A bare pysyncobj counter process, with or without node.wire's framing (for tests).

``python -m tests.support.counter_peer --self A --partners B,C --framing stored|zlib
--count N --password P --out FILE``: joins the cluster; whichever member leads commits
increments, one entry each, until the counter reaches ``N`` (a new leader carries on
after an election); every member waits until its counter reaches ``N``
and writes ``{"value": ..., "stored": ...}`` to FILE. The test kills it by pid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pysyncobj import SyncObjException

from loadtests.harness.raft_ceiling import counter_class
from node import wire

WAIT_S = 30.0  # for a leader, and for the counter to reach --count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.counter_peer")
    parser.add_argument("--self", dest="me", required=True)
    parser.add_argument("--partners", required=True)
    parser.add_argument("--framing", choices=("stored", "zlib"), required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.framing == "stored":
        wire.install()
    counter = counter_class()(args.me, args.partners.split(","), args.password)
    deadline = time.monotonic() + WAIT_S
    while counter.value < args.count and time.monotonic() < deadline:
        if not counter._isLeader():
            time.sleep(0.05)  # a follower waits; it takes over if it becomes the leader
            continue
        try:
            counter.incr(sync=True, timeout=5)
        except SyncObjException:  # leadership moved or timed out: look again
            time.sleep(0.05)
    partial = args.out.with_suffix(".partial")  # renamed whole: the test never reads half
    partial.write_text(json.dumps({"value": counter.value, "stored": wire.installed()}))
    partial.rename(args.out)
    time.sleep(WAIT_S)  # stay a member until the test has every answer and kills us
    return 0


if __name__ == "__main__":
    sys.exit(main())
