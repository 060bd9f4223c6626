"""Start, kill, pause and restart the processes of a chaos cluster, by pid.

Theory of operation: every process (the proxy, each node, each gateway, the snapshot
writer) is a child of
the chaos run, started with ``subprocess.Popen`` in its own session so that a signal to
its process group also reaches what it forked (a node forks to write its dump). The
launcher remembers every pid it ever started; ``kill_all`` SIGKILLs each of them and is
called on every exit path of a run. Children also die with the run even if it is
SIGKILLed itself: they find its pid in ``FLASHSALE_SUPERVISOR_PID`` and ask the kernel
for a signal when it goes (``cluster.supervisor.die_with_parent``).

Faults act on one process: ``kill`` (SIGKILL to the group: a crash or power cut as the
peers see it), ``pause``/``resume`` (SIGSTOP/SIGCONT to the process itself) and
``start`` again. Output of each process goes to ``logs/<name>.log``, appended across
restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from chaos.routed_node import ROUTES_ENV
from chaos.slow_disk import FSYNC_DELAY_ENV
from chaos.topology import Topology
from cluster.supervisor import SUPERVISOR_PID_ENV

STARTUP_TIMEOUT_S = 60.0  # a process must answer /healthz within this
POLL_S = 0.1
STOP_GRACE_S = 15.0  # SIGTERM -> SIGKILL at the end of a run
HEALTH_TIMEOUT_S = 2.0


class Launcher:
    """The processes of one chaos cluster; see the module docstring."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.log_dir = topology.directory / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: list[int] = []
        self.paused: set[str] = set()
        self.starts: dict[str, int] = {}

    # -- what each process is ------------------------------------------------------------

    def _argv(self, name: str) -> list[str]:
        config = str(self.topology.config_path)
        if name == "proxy":
            control = str(self.topology.proxy_control)
            links = str(self.topology.directory / "links.json")
            return [sys.executable, "-m", "chaos.proxy", "--links", links, "--control", control]
        if name in self.topology.node_ids:
            return [sys.executable, "-m", "chaos.routed_node", "--config", config, name]
        if name in self.topology.gateway_ids:
            return [sys.executable, "-m", "gateway", "--config", config, name]
        if name in self.topology.writer_ids:
            return [sys.executable, "-m", "snapshots", "--config", config]
        raise ValueError(f"no process named {name!r} in this cluster")

    def health_url(self, name: str) -> str:
        if name == "proxy":
            return self.topology.proxy_control.url + "/healthz"
        if name in self.topology.node_ids:
            return self.topology.config.node(name).api.url + "/healthz"
        listen = self.topology.config.snapshots.listen
        if name in self.topology.writer_ids and listen is not None:
            return listen.url + "/healthz"
        return self.topology.config.gateway(name).listen.url + "/healthz"

    # -- signals ---------------------------------------------------------------------------

    def start(self, name: str, extra_env: Mapping[str, str] | None = None) -> int:
        """Spawn ``name`` (which must not be running); returns its pid. ``extra_env`` is
        added to its environment for this start only (a clock skew)."""
        if self.is_running(name):
            raise RuntimeError(f"{name} is already running (pid {self.procs[name].pid})")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        env["PYTHONUNBUFFERED"] = "1"
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        if name in self.topology.node_ids:
            env[ROUTES_ENV] = json.dumps(dict(self.topology.routes[name]))
            delay_file = self.topology.fsync_delay_path(name)
            delay_file.parent.mkdir(parents=True, exist_ok=True)
            env[FSYNC_DELAY_ENV] = str(delay_file)
        env.update(extra_env or {})
        with open(self.log_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                self._argv(name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.topology.directory,
                env=env,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.started_pids.append(proc.pid)
        self.paused.discard(name)
        self.starts[name] = self.starts.get(name, 0) + 1
        return proc.pid

    def is_running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None else None

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and whatever it forked; wait until it is gone."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.paused.discard(name)

    def pause(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            self.paused.add(name)

    def resume(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self.paused.discard(name)

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every running process (gateways first), wait, SIGKILL what is left."""
        order = [
            *self.topology.writer_ids, *self.topology.gateway_ids, *self.topology.node_ids,
            "proxy",
        ]
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(name)

    def kill_all(self) -> None:
        """SIGKILL every process this launcher ever started (never raises)."""
        for pid in self.started_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGCONT)
                os.killpg(pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    # -- waiting ---------------------------------------------------------------------------

    async def wait_healthy(
        self, session: aiohttp.ClientSession, name: str, timeout_s: float = STARTUP_TIMEOUT_S
    ) -> None:
        """Poll ``name``'s /healthz until 200; raise if it exits or the deadline passes."""
        url = self.health_url(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.tail(name)}")
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                async with session.get(
                    url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
                ) as resp:
                    if resp.status == 200:
                        return
            if loop.time() > deadline:
                raise TimeoutError(f"{name} not healthy after {timeout_s:g}s: {self.tail(name)}")
            await asyncio.sleep(POLL_S)

    def tail(self, name: str, lines: int = 15) -> str:
        path: Path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])
