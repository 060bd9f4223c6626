"""Run a set of child processes, restart the ones that crash, stop them all cleanly.

Theory of operation: each child runs in its own session (so its own process group): a
Ctrl-C on the terminal reaches only the supervisor, which then stops the children in
order, and a signal to the group also reaches whatever the child forked (pysyncobj
forks to write snapshots). One watcher task per child spawns it, waits for it and, unless
the supervisor is stopping, restarts it after a doubling pause (reset once a run lasted
``STABLE_RUN_S``). Stopping goes tier by tier, highest first (gateways and console before
the nodes they talk to): SIGTERM to each group, ``grace_s`` to exit, then SIGKILL. A
second stop request kills at once.

Children started by a supervisor find its pid in ``FLASHSALE_SUPERVISOR_PID`` and call
``die_with_parent`` so that they exit even when the supervisor itself is SIGKILLed.

Each child's stdout and stderr go to its own log file; the supervisor writes one JSON
line there per start and exit, and one short human line per start and exit to ``out``.

With a ``pid_dir``, the pid of each running child is published in
``<pid_dir>/<name>.pid`` (written atomically once it is spawned, removed once it has
exited, so a file never names a process that ended): other tools, such as a chaos run
against this cluster (``chaos.target``), signal the children by these pids and see the
supervisor's restarts as a new pid in the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

SUPERVISOR_PID_ENV = "FLASHSALE_SUPERVISOR_PID"
RESTART_BACKOFF_FIRST_S = 0.5  # pause before the first restart of a crashed child
RESTART_BACKOFF_MAX_S = 30.0  # pauses double up to this
STABLE_RUN_S = 30.0  # a child that ran this long restarts after the first pause again
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL, per tier
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One process to keep running."""

    name: str
    argv: tuple[str, ...]
    log_path: Path
    tier: int = 0  # higher tiers stop first
    env: Mapping[str, str] = field(default_factory=dict)  # added to the inherited environment


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    spawned: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Supervisor:
    """Keeps ``specs`` running until ``stop``; see the module docstring."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        out: TextIO | None = None,
        grace_s: float = STOP_GRACE_S,
        backoff_first_s: float = RESTART_BACKOFF_FIRST_S,
        backoff_max_s: float = RESTART_BACKOFF_MAX_S,
        pid_dir: Path | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._children = [_Child(s) for s in specs]
        self._out = out if out is not None else sys.stdout
        self._grace_s = grace_s
        self._backoff_first_s = backoff_first_s
        self._backoff_max_s = backoff_max_s
        self._pid_dir = pid_dir
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- public ------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every child (in the order given) and return once each got a first try."""
        for child in self._children:
            child.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            child.task = asyncio.create_task(self._watch(child), name=f"watch-{child.spec.name}")
        await asyncio.gather(*(c.spawned.wait() for c in self._children))

    def pids(self) -> dict[str, int]:
        """Name -> pid of every child running now."""
        return {
            c.spec.name: c.proc.pid
            for c in self._children
            if c.proc is not None and c.proc.returncode is None
        }

    def starts(self) -> dict[str, int]:
        """Name -> how many times the child was started."""
        return {c.spec.name: c.starts for c in self._children}

    def request_stop(self) -> None:
        """Ask for a stop (safe from a signal handler); a second request kills at once."""
        if self._stop_requested.is_set():
            self._say("second stop request: killing every child now")
            self._signal_all(signal.SIGKILL)
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    async def stop(self) -> None:
        """Stop every child, highest tier first: SIGTERM, grace, SIGKILL. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._stop_requested.set()
        for tier in sorted({c.spec.tier for c in self._children}, reverse=True):
            group = [c for c in self._children if c.spec.tier == tier]
            for c in group:
                self._signal(c, signal.SIGTERM)
            tasks = [c.task for c in group if c.task is not None]
            if not tasks:
                continue
            _, pending = await asyncio.wait(tasks, timeout=self._grace_s)
            for c in group:
                if c.task in pending:
                    self._say(f"{c.spec.name} ignored SIGTERM for {self._grace_s:g}s: SIGKILL")
                    self._signal(c, signal.SIGKILL)
            await asyncio.gather(*tasks)
        self._stopped.set()

    async def run_until_signal(self) -> None:
        """Install SIGINT/SIGTERM handlers, start every child, wait for a signal (or a
        ``request_stop``), then stop every child; children never outlive this call."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            if not any(c.task is not None for c in self._children):
                await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    # -- plumbing ----------------------------------------------------------------------

    async def _watch(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        pause_s = self._backoff_first_s
        name = child.spec.name
        while not self._stop_requested.is_set():
            began = loop.time()
            try:
                proc = await self._spawn(child)
            except OSError as exc:
                code: int | None = None
                self._say(f"{name} could not start: {exc}")
            else:
                child.proc = proc
                child.starts += 1
                self._say(f"{name} started (pid {proc.pid}), log {child.spec.log_path}")
                child.spawned.set()
                if self._stop_requested.is_set():  # stop began during the spawn
                    self._signal(child, signal.SIGTERM)
                self._publish_pid(child, proc.pid)
                code = await proc.wait()
                self._unpublish_pid(child, proc.pid)
                _kill_group(proc.pid, signal.SIGKILL)  # whatever it forked and left behind
                self._log_line(child, "exited", pid=proc.pid, code=code)
            child.spawned.set()
            if self._stop_requested.is_set():
                self._say(f"{name} stopped (exit {code})")
                return
            ran_s = loop.time() - began
            if ran_s >= STABLE_RUN_S:
                pause_s = self._backoff_first_s
            self._say(f"{name} exited (code {code}) after {ran_s:.1f}s; restart in {pause_s:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), pause_s)
            pause_s = min(pause_s * 2, self._backoff_max_s)
        child.spawned.set()

    async def _spawn(self, child: _Child) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env.update(child.spec.env)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(child.spec.log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *child.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._log_line(child, "started", pid=proc.pid, argv=list(child.spec.argv))
        return proc

    def pid_path(self, name: str) -> Path | None:
        """Where the pid of child ``name`` is published (None without a ``pid_dir``)."""
        return None if self._pid_dir is None else self._pid_dir / f"{name}.pid"

    def _publish_pid(self, child: _Child, pid: int) -> None:
        path = self.pid_path(child.spec.name)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{pid}\n", encoding="ascii")
            os.replace(tmp, path)
        except OSError as exc:  # the child runs anyway; only outside tools lose sight of it
            self._say(f"{child.spec.name}: could not write {path}: {exc}")

    def _unpublish_pid(self, child: _Child, pid: int) -> None:
        path = self.pid_path(child.spec.name)
        if path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text(encoding="ascii")) == pid:
                path.unlink()

    def _signal(self, child: _Child, sig: signal.Signals) -> None:
        if child.proc is not None and child.proc.returncode is None:
            _kill_group(child.proc.pid, sig)

    def _signal_all(self, sig: signal.Signals) -> None:
        for c in self._children:
            self._signal(c, sig)

    def _say(self, line: str) -> None:
        self._out.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")
        self._out.flush()

    def _log_line(self, child: _Child, msg: str, **fields: object) -> None:
        now = time.time()
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            "level": "info",
            "proc": "supervisor",
            "logger": "cluster.supervisor",
            "msg": msg,
            "child": child.spec.name,
            **fields,
        }
        with open(child.spec.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def die_with_parent() -> None:
    """In a supervised child: exit when the supervisor dies, even by SIGKILL.

    Asks Linux to send SIGTERM when the parent goes (prctl PR_SET_PDEATHSIG), then checks
    the parent is still the supervisor (it may have died before the request). Does
    nothing outside a supervisor or off Linux.
    """
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not fatal: the supervisor still stops its children itself
    if str(os.getppid()) != expected:
        os.kill(os.getpid(), signal.SIGTERM)
