"""A slow disk for one chaos node: every fsync of the process waits as long as a control
file says, switched on and off from outside while the node runs.

Theory of operation: a node makes its Raft log durable with ``os.fdatasync`` (and its
term, vote and dumps with ``os.fsync``) in ``node.journal``, on the tick thread, before
it acknowledges anything. A slow disk is a slow fsync: ``install_fsync_delay`` wraps
both functions so that each call first sleeps for the delay written in a control file
(an integer of milliseconds; absent, empty or ``0`` means no delay), then syncs for
real. The file is read at most every ``CHECK_PERIOD_S``, so the nemesis turns the
fault on or off by writing the file, without a restart.

Nothing of this is in the node's code: only ``chaos.routed_node`` (the entry point a
chaos run uses, never ``python -m node``) installs it, and only when
``CHAOS_FSYNC_DELAY_FILE`` names the control file. A production node cannot be slowed
down this way. (Outside the process there was no way here: no FUSE delay filesystem is
installed, and ``dm-delay`` needs a loop device and device-mapper rights a chaos run
should not ask for.)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

FSYNC_DELAY_ENV = "CHAOS_FSYNC_DELAY_FILE"
CHECK_PERIOD_S = 0.1  # the control file is read at most this often
MAX_DELAY_MS = 10_000  # a larger number in the file is clamped to this


def parse_delay_ms(text: str) -> int:
    """The delay a control file's text asks for: 0 for nothing or garbage, clamped."""
    try:
        value = int(text.strip() or "0")
    except ValueError:
        return 0
    return max(0, min(value, MAX_DELAY_MS))


class DelayControl:
    """The current delay, read from ``path`` at most every ``CHECK_PERIOD_S``."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._delay_ms = 0

    def delay_ms(self) -> int:
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= CHECK_PERIOD_S:
                self._checked_at = now
                try:
                    self._delay_ms = parse_delay_ms(self.path.read_text(encoding="ascii"))
                except (OSError, UnicodeDecodeError):
                    self._delay_ms = 0
            return self._delay_ms


def write_delay(path: Path, delay_ms: int) -> None:
    """Set the delay of the node reading ``path`` (atomically: never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(int(delay_ms)), encoding="ascii")
    os.replace(tmp, path)


def install_fsync_delay(path: Path) -> DelayControl:
    """Make every ``os.fsync``/``os.fdatasync`` of this process wait as ``path`` says."""
    control = DelayControl(path)
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def slow(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            delay_ms = control.delay_ms()
            if delay_ms:
                time.sleep(delay_ms / 1000)
            real(fd)

        return sync

    os.fsync = slow(real_fsync)  # type: ignore[assignment]
    os.fdatasync = slow(real_fdatasync)  # type: ignore[assignment]
    return control
