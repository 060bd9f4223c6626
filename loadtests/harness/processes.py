"""Benchmark processes started beside a LocalCluster and remembered by pid.

Everything started here lands in the cluster's ``procs`` and ``started_pids``, so the
cluster's ``kill_all`` (always called in a ``finally``) SIGKILLs it, pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tests.support.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def spawn(cluster: LocalCluster, proc_id: str, argv: list[str], env: Mapping[str, str]) -> None:
    """Start ``python ARGV`` in the cluster's directory and bookkeeping."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    # The processes run in the cluster's directory; ``tests`` and ``loadtests`` are
    # importable from the repository only.
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    full_env.update(env, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))
    with open(cluster.log_path(proc_id), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cluster.dir,
            env=full_env,
        )
    cluster.procs[proc_id] = proc
    cluster.started_pids.append(proc.pid)


def wait_ok(cluster: LocalCluster, proc_id: str, url: str) -> None:
    """Poll ``url`` until it answers 200; fail fast if the process died."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        proc = cluster.procs[proc_id]
        if proc.poll() is not None:
            raise RuntimeError(f"{proc_id} exited with {proc.returncode}\n{cluster.tails()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1.0) as resp:
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc_id}: {url} not answering 200\n{cluster.tails()}")
        time.sleep(0.1)


def start_gateway(cluster: LocalCluster, gateway_id: str, env: Mapping[str, str]) -> str:
    """Run one gateway of the config; its base URL once it is ready."""
    gw = cluster.config.gateway(gateway_id)
    spawn(cluster, gw.id, ["-m", "gateway", "--config", str(cluster.config_path), gw.id], env)
    wait_ok(cluster, gw.id, gw.listen.url + "/readyz")
    return gw.listen.url


def stop(cluster: LocalCluster, proc_id: str) -> None:
    """SIGTERM, wait, SIGKILL if it will not go."""
    proc = cluster.procs[proc_id]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
