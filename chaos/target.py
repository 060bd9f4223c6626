"""The processes of a cluster that ``flashsale up`` runs, signalled by their pid files.

Theory of operation: ``flashsale up`` publishes the pid of each child in
``<data_dir>/run/<id>.pid`` while it runs (``cluster.supervisor``) and restarts a child
that dies, after a pause (0.5 s, doubling while it keeps dying within 30 s).
``SupervisedProcesses`` gives the nemesis the same handle on those processes as the
chaos launcher gives on its own children: ``kill`` SIGKILLs the child's process group
(the child was started in its own session) and waits until it is gone, ``pause`` and
``resume`` send SIGSTOP/SIGCONT, and ``start`` does not spawn anything: the supervisor
does, and ``wait_healthy`` waits for the new pid to appear in the file and the process
to answer ``/healthz``. The same command line, environment and log file as before,
because it is the supervisor's own restart.

Only the nodes and gateways are targeted (the snapshot writer's store is not checked in
a target run). A child's environment cannot be changed from outside, so a clock skew,
which needs a restart under libfaketime, is not possible here, nor are the network
faults, which need the chaos run's proxy between the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from cluster.config import ClusterConfig

RESTART_TIMEOUT_S = 60.0  # the supervisor restarts within its longest backoff (30 s)
GONE_TIMEOUT_S = 10.0  # a SIGKILLed process is reaped by the supervisor within this
POLL_S = 0.1
HEALTH_TIMEOUT_S = 2.0


def pid_dir(config: ClusterConfig) -> Path:
    """Where ``flashsale up`` publishes its children's pids (``cli.up.pid_dir``)."""
    return config.data_dir / "run"


def alive(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # The state follows the command name in parentheses, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass(frozen=True, slots=True)
class TargetLayout:
    """The processes of a target cluster the nemesis may hit."""

    node_ids: list[str]
    gateway_ids: list[str]
    writer_ids: list[str]


class SupervisedProcesses:
    """Kill, pause and await the restart of ``flashsale up``'s children (module doc)."""

    def __init__(self, config: ClusterConfig, directory: Path | None = None) -> None:
        self.config = config
        self.directory = directory if directory is not None else pid_dir(config)
        self.topology = TargetLayout(
            [n.id for n in config.nodes], [g.id for g in config.gateways], []
        )
        self.starts: dict[str, int] = {}  # restarts seen, per process
        self._killed: dict[str, int] = {}  # name -> the pid killed, until a new one runs

    def published(self) -> list[str]:
        """The nodes and gateways whose pid file names a running process."""
        names = [*self.topology.node_ids, *self.topology.gateway_ids]
        return [n for n in names if self.pid(n) is not None]

    def pid(self, name: str) -> int | None:
        """The pid in ``name``'s pid file, when that process is running."""
        try:
            pid = int((self.directory / f"{name}.pid").read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None
        return pid if alive(pid) and self._ours(pid, name) else None

    def _ours(self, pid: int, name: str) -> bool:
        """Whether ``pid`` runs ``flashsale up``'s child ``name`` of this cluster: a pid
        file left by a supervisor that died may name a pid the kernel has given to an
        unrelated process since, whose group a kill would otherwise hit."""
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if "cli" not in args or name not in args:
            return False
        if self.config.path is None or "--config" not in args[:-1]:
            return True
        given = args[args.index("--config") + 1]
        return Path(given).name == Path(self.config.path).name

    def is_running(self, name: str) -> bool:
        return self.pid(name) is not None

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s process group and wait until the process is gone."""
        pid = self.pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._killed[name] = pid
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} (pid {pid}) still there after SIGKILL")
            time.sleep(POLL_S)

    def pause(self, name: str) -> None:
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def start(self, name: str, extra_env: Mapping[str, str] | None = None) -> int:
        """Nothing to spawn: the supervisor restarts ``name`` itself (``wait_healthy``
        waits for it). Returns the pid running now, or 0 while there is none."""
        if extra_env:
            raise ValueError("a supervised process restarts with its own environment")
        return self.pid(name) or 0

    def health_url(self, name: str) -> str:
        if name in self.topology.node_ids:
            return self.config.node(name).api.url + "/healthz"
        return self.config.gateway(name).listen.url + "/healthz"

    async def wait_healthy(
        self, session: aiohttp.ClientSession, name: str, timeout_s: float = RESTART_TIMEOUT_S
    ) -> None:
        """Wait until the supervisor runs ``name`` again (a new pid after a kill) and it
        answers ``/healthz`` with 200."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        url = self.health_url(name)
        while True:
            pid = self.pid(name)
            if pid is not None and pid != self._killed.get(name):
                if name in self._killed:
                    del self._killed[name]
                    self.starts[name] = self.starts.get(name, 0) + 1
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    async with session.get(
                        url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
                    ) as resp:
                        if resp.status == 200:
                            return
            if loop.time() > deadline:
                raise TimeoutError(f"{name} not running and healthy after {timeout_s:g}s")
            await asyncio.sleep(POLL_S)
