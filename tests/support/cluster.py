"""LocalCluster: real node (and gateway) processes on free loopback ports, for tests.

Every process is started with ``subprocess.Popen`` and remembered by pid; ``kill_all``
SIGKILLs every one of them (the ``local_cluster`` fixture in tests/conftest.py always
calls it on teardown, pass or fail). Each process writes stdout+stderr to
``<dir>/logs/<id>.log`` (appended across restarts); ``tails()`` returns their last lines
for failure reports.

The HTTP helpers are synchronous (urllib) so plain pytest tests can drive a cluster;
``submit`` follows the leader through 421 and retries 503 with the very same command
dicts (same idempotency keys), as every real client must.

Membership: ``joining=("n4",)`` writes ``joining = true`` for those nodes: configured but
not members until ``flashsale cluster add-node`` (``start()`` leaves them stopped).

Gateways: ``LocalCluster(..., gateways=N)`` writes N ``[[gateways]]`` entries with free
ports; ``start_gateway(id)`` runs ``python -m gateway --config PATH ID`` like a node.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.auth import internal_token
from cluster.config import ClusterConfig, build_config, load_config

HTTP_TIMEOUT_S = 5.0  # one request of the harness
STARTUP_TIMEOUT_S = 30.0  # a process must answer /healthz within this
POLL_S = 0.05  # pause between polls of a condition
TAIL_LINES = 40  # lines per log in failure reports


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def in_process_config(
    directory: Path,
    n_nodes: int = 1,
    *,
    durability: str = "fsync",
    secret: str = "in-process-test-secret-0123456789abcdef",
    ledger: Mapping[str, int] | None = None,
    **raft: int,
) -> ClusterConfig:
    """A validated config with free loopback ports, for nodes run inside the test process."""
    ports = free_ports(2 * n_nodes + 1)
    data = {
        "cluster": {
            "data_dir": str(directory / "data"),
            "secret": secret,
            "durability": durability,
        },
        "raft": dict(raft),
        "ledger": dict(ledger or {}),
        "nodes": [
            {
                "id": f"n{i + 1}",
                "raft": f"127.0.0.1:{ports[2 * i]}",
                "api": f"127.0.0.1:{ports[2 * i + 1]}",
            }
            for i in range(n_nodes)
        ],
        "admin": {"listen": f"127.0.0.1:{ports[-1]}"},
        "bots": {"enabled": False},  # trusted test clients
    }
    return build_config(data, directory)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: dict[str, Any]  # the JSON object answered ({"raw": ...} when not JSON)
    headers: Mapping[str, str]
    raw: bytes = b""


class LocalCluster:
    """A cluster.toml in ``directory`` and the processes started from it."""

    def __init__(
        self,
        directory: Path,
        n_nodes: int = 3,
        gateways: int = 0,
        *,
        durability: str = "fsync",
        secret: str | None = None,
        ledger: Mapping[str, int] | None = None,
        gateway_settings: Mapping[str, int] | None = None,
        bots: Mapping[str, object] | None = None,
        joining: Collection[str] = (),
        **raft_overrides: int,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.secret = secret or "test-" + secrets.token_hex(20)
        ports = free_ports(2 * n_nodes + gateways + 1)
        lines = [
            "[cluster]",
            'name = "test"',
            f"data_dir = {_toml_value(self.dir / 'data')}",
            f"secret = {_toml_value(self.secret)}",
            'mode = "development"',
            f"durability = {_toml_value(durability)}",
            "",
            "[raft]",
            *(f"{k} = {_toml_value(v)}" for k, v in raft_overrides.items()),
            "",
            "[ledger]",
            *(f"{k} = {_toml_value(v)}" for k, v in (ledger or {}).items()),
            "",
        ]
        # Bot defences are off unless a test turns them on: the test clients are trusted.
        lines.append("[bots]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in (bots or {"enabled": False}).items()]
        lines.append("")
        if gateway_settings:
            lines.append("[gateway]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in gateway_settings.items()]
            lines.append("")
        for i in range(n_nodes):
            lines += [
                "[[nodes]]",
                f'id = "n{i + 1}"',
                f'raft = "127.0.0.1:{ports[2 * i]}"',
                f'api = "127.0.0.1:{ports[2 * i + 1]}"',
                *(["joining = true"] if f"n{i + 1}" in joining else []),
                "",
            ]
        for j in range(gateways):
            listen = f"127.0.0.1:{ports[2 * n_nodes + j]}"
            lines += ["[[gateways]]", f'id = "g{j + 1}"', f'listen = "{listen}"', ""]
        lines += [
            "[admin]",
            f'listen = "127.0.0.1:{ports[-1]}"',
            "",
            "[storage]",
            f"url = {_toml_value('sqlite:///' + str(self.dir / 'orders.db'))}",
            "",
        ]
        self.config_path = self.dir / "cluster.toml"
        self.config_path.write_text("\n".join(lines), encoding="utf-8")
        self.config: ClusterConfig = load_config(self.config_path, env={})
        self.token = internal_token(self.secret)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: list[int] = []
        self._leader_hint: str | None = None

    # -- processes ---------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[str]:
        return [n.id for n in self.config.nodes]

    def log_path(self, proc_id: str) -> Path:
        return self.dir / "logs" / f"{proc_id}.log"

    def _spawn(self, proc_id: str, module: str) -> subprocess.Popen[bytes]:
        if self.is_running(proc_id):
            raise RuntimeError(f"{proc_id} is already running (pid {self.procs[proc_id].pid})")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path(proc_id), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(self.config_path), proc_id],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
            )
        self.procs[proc_id] = proc
        self.started_pids.append(proc.pid)
        return proc

    def start(self, *, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        """Start every node (and gateway); return the leader's id once there is one."""
        members = [n.id for n in self.config.nodes if not n.joining]
        for node_id in members:
            self.start_node(node_id, wait=False)
        for node_id in members:
            self.wait_healthy(node_id, timeout_s)
        leader = self.wait_for_leader(timeout_s)
        for g in self.config.gateways:
            self.start_gateway(g.id)
        return leader

    def start_node(self, node_id: str, *, wait: bool = True) -> None:
        self.config.node(node_id)
        self._spawn(node_id, "node")
        if wait:
            self.wait_healthy(node_id)

    def start_gateway(self, gateway_id: str, *, wait: bool = True) -> None:
        """Run ``python -m gateway --config PATH GATEWAY_ID`` (the gateway package's entry)."""
        gw = self.config.gateway(gateway_id)
        self._spawn(gateway_id, "gateway")
        if wait:
            self._wait_http(gateway_id, gw.listen.url + "/healthz", STARTUP_TIMEOUT_S)

    def is_running(self, proc_id: str) -> bool:
        proc = self.procs.get(proc_id)
        return proc is not None and proc.poll() is None

    def running_nodes(self) -> list[str]:
        return [n for n in self.node_ids if self.is_running(n)]

    def kill_node(self, node_id: str) -> None:
        """SIGKILL (no clean-up at all: what a crash or power cut looks like to the peers)."""
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if self._leader_hint == node_id:
            self._leader_hint = None

    def stop_node(self, node_id: str, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout_s)

    def pause_node(self, node_id: str) -> None:
        self.procs[node_id].send_signal(signal.SIGSTOP)

    def resume_node(self, node_id: str) -> None:
        self.procs[node_id].send_signal(signal.SIGCONT)

    def restart_node(self, node_id: str, *, wait: bool = True) -> None:
        """SIGKILL the node, then start it again from its journal and dump."""
        self.kill_node(node_id)
        self.start_node(node_id, wait=wait)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM everything, wait, SIGKILL what is left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill_all(self) -> None:
        """SIGKILL every process this cluster ever started (teardown; never raises)."""
        for pid in self.started_pids:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                proc.wait(10)

    def tails(self, lines: int = TAIL_LINES) -> str:
        """The last lines of every process log, for failure reports."""
        out = []
        for path in sorted((self.dir / "logs").glob("*.log")):
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()
            out.append(f"----- {path.name} (last {lines} lines) -----")
            out.extend(text[-lines:])
        return "\n".join(out)

    # -- HTTP -------------------------------------------------------------------------------

    def request(
        self,
        node_id: str,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> HttpAnswer:
        """One request to a node's API (raises OSError when it does not answer)."""
        url = self.config.node(node_id).api.url + path
        return self._http(method, url, body, token=token, timeout_s=timeout_s)

    def _http(
        self,
        method: str,
        url: str,
        body: object = None,
        *,
        token: str | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> HttpAnswer:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
                return HttpAnswer(resp.status, _json(raw), dict(resp.headers), raw)
        except urllib.error.HTTPError as err:
            with err:
                raw = err.read()
                return HttpAnswer(err.code, _json(raw), dict(err.headers), raw)

    def get(self, node_id: str, path: str) -> dict[str, Any]:
        """GET that must answer 200."""
        answer = self.request(node_id, "GET", path)
        if answer.status != 200:
            raise AssertionError(f"GET {path} on {node_id}: {answer.status} {answer.body}")
        return answer.body

    def metrics(self, node_id: str) -> str:
        """The node's Prometheus text (GET /metrics, no token needed)."""
        answer = self.request(node_id, "GET", "/metrics", token="")
        if answer.status != 200:
            raise AssertionError(f"GET /metrics on {node_id}: {answer.status}")
        return answer.raw.decode()

    def status(self, node_id: str) -> dict[str, Any]:
        """/v1/status of one node, with its ledger digest."""
        return self.get(node_id, "/v1/status?digest=1")

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        """Status of every running node (None for one that does not answer)."""
        out: dict[str, dict[str, Any] | None] = {}
        for node_id in self.node_ids:
            if not self.is_running(node_id):
                continue
            try:
                out[node_id] = self.status(node_id)
            except (OSError, AssertionError):
                out[node_id] = None
        return out

    def wait_healthy(self, node_id: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self._wait_http(node_id, self.config.node(node_id).api.url + "/healthz", timeout_s)

    def _wait_http(self, proc_id: str, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self.procs[proc_id]
            if proc.poll() is not None:
                raise RuntimeError(f"{proc_id} exited with {proc.returncode}\n{self.tails()}")
            try:
                if self._http("GET", url, timeout_s=1.0).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc_id} not healthy after {timeout_s}s\n{self.tails()}")
            time.sleep(POLL_S)

    def leader(self) -> str | None:
        """The running node that says it leads (the highest term if several do)."""
        best: tuple[int, str] | None = None
        for node_id, st in self.statuses().items():
            if st is not None and st["role"] == "leader" and (best is None or st["term"] > best[0]):
                best = (st["term"], node_id)
        return None if best is None else best[1]

    def wait_for_leader(
        self, timeout_s: float = STARTUP_TIMEOUT_S, *, exclude: str | None = None
    ) -> str:
        """Poll until a running node (not ``exclude``) leads and a majority follows it."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.statuses()
            leader = self.leader()
            if leader is not None and leader != exclude:
                followers = sum(
                    1
                    for st in statuses.values()
                    if st is not None and st["leader"] and st["leader"]["id"] == leader
                )
                if followers > len(self.node_ids) // 2:
                    self._leader_hint = leader
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader after {timeout_s}s: {statuses}\n{self.tails()}")
            time.sleep(POLL_S)

    def submit(self, commands: list[dict[str, Any]], *, timeout_s: float = 30.0) -> dict[str, Any]:
        """POST /v1/commands to the leader: follow 421, retry 503 and network errors with
        the same command dicts (same keys) until 200 or ``timeout_s``. Returns the body."""
        deadline = time.monotonic() + timeout_s
        target = self._leader_hint or (self.running_nodes() or self.node_ids)[0]
        last = "no attempt"
        while time.monotonic() < deadline:
            try:
                answer = self.request(target, "POST", "/v1/commands", {"commands": commands})
            except OSError as exc:
                last = f"{target}: {exc}"
                target = self._next_node(target)
                time.sleep(POLL_S)
                continue
            if answer.status == 200:
                self._leader_hint = target
                return answer.body
            last = f"{target}: {answer.status} {answer.body}"
            if answer.status == 421 and answer.body.get("leader"):
                target = answer.body["leader"]["id"]
                continue
            if answer.status in (421, 503):
                if answer.body.get("type", "").endswith("/no-leader") or answer.status == 421:
                    target = self._next_node(target)
                time.sleep(POLL_S)
                continue
            raise AssertionError(f"submit refused: {last}")
        raise TimeoutError(f"submit not confirmed within {timeout_s}s; last: {last}")

    def _next_node(self, node_id: str) -> str:
        candidates = self.running_nodes() or self.node_ids
        if node_id in candidates:
            return candidates[(candidates.index(node_id) + 1) % len(candidates)]
        return candidates[0]

    def digests(self) -> dict[str, tuple[int, str]]:
        """(ledger_index, digest) of every running node that answers."""
        return {
            node_id: (st["ledger_index"], st["digest"])
            for node_id, st in self.statuses().items()
            if st is not None
        }

    def wait_converged(self, timeout_s: float = 30.0, *, min_index: int = 0) -> tuple[int, str]:
        """Poll until every running node holds the same ledger (index >= min_index)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.digests()
            values = set(found.values())
            running = self.running_nodes()
            if len(found) == len(running) and len(values) == 1:
                value = values.pop()
                if value[0] >= min_index:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes did not converge: {found}\n{self.tails()}")
            time.sleep(POLL_S)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw[:500].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"value": value}
