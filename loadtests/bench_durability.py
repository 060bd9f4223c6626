"""Commit rate with ``durability = "fsync"`` against ``"os"`` on a local 3-node cluster.

Run from the repository root: ``python -m loadtests.bench_durability [--seconds 8]``.

For each durability mode it starts a fresh 3-node cluster (tests/support/cluster.py) and
runs, for ``--seconds`` each, workers that submit reserve batches to the leader one after
the other (each worker waits for its commit before sending the next): one worker with
one command per entry (latency), 16 workers with one command per entry (fsync cost under
concurrency: every entry is synced on the leader and on the followers), 16 workers with
100 commands per entry (the micro-batching the gateway does). It prints one Markdown row
per run: committed entries/s, commands/s and commit latency percentiles as the client saw
them, plus the fsyncs a follower made per committed entry (below 1: group commit, several
entries received in one tick share one fsync) and the CPU (user + system, read from
/proc) the leader and the three nodes together used per committed entry. Numbers depend
on the disk and on what else runs on the machine (the cluster and the client share its
cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from loadtests.harness.machine import cpu_seconds
from tests.support.cluster import LocalCluster

WORKLOADS = ((1, 1), (16, 1), (16, 100))  # (concurrent workers, commands per entry)
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Run:
    durability: str
    workers: int
    batch: int
    seconds: float
    entries: int
    entries_per_s: float
    commands_per_s: float
    p50_ms: float
    p99_ms: float
    follower_fsyncs_per_entry: float
    leader_cpu_us_per_entry: float  # the leader's CPU (user + system) per committed entry
    nodes_cpu_us_per_entry: float  # the same, summed over the 3 nodes
    errors: dict[str, int]


async def _worker(
    session: aiohttp.ClientSession,
    target: list[str],
    headers: dict[str, str],
    prefix: str,
    batch: int,
    until: float,
    latencies: list[float],
    errors: dict[str, int],
) -> None:
    """Submit batches back to back; follow a leader change (421) like a client would."""
    n = 0
    while time.monotonic() < until:
        commands = [
            {
                "type": "reserve",
                "key": f"{prefix}-{n + i}",
                "user_id": f"{prefix}-{n + i}",
                "product_id": "bench",
                "quantity": 1,
            }
            for i in range(batch)
        ]
        n += batch
        started = time.perf_counter()
        async with session.post(
            f"http://{target[0]}/v1/commands", json={"commands": commands}, headers=headers
        ) as resp:
            body = await resp.json(content_type=None)
        if resp.status == 200:
            latencies.append(time.perf_counter() - started)
            continue
        kind = str(body.get("type", "")).rsplit("/", 1)[-1] if isinstance(body, dict) else ""
        label = f"{resp.status} {kind}".strip()
        errors[label] = errors.get(label, 0) + 1  # e.g. an election under CPU starvation
        leader = body.get("leader") if isinstance(body, dict) else None
        if resp.status == 421 and isinstance(leader, dict):
            target[0] = str(leader["api"])
        else:
            await asyncio.sleep(0.05)


async def _measure(
    cluster: LocalCluster, durability: str, workers: int, batch: int, seconds: float, tag: str
) -> Run:
    leader = cluster.wait_for_leader()
    target = [str(cluster.config.node(leader).api)]
    headers = {"Authorization": f"Bearer {cluster.token}"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    followers = [n for n in cluster.node_ids if n != leader]
    syncs_before = sum(_follower_syncs(cluster, n) for n in followers)
    pids = {n: cluster.procs[n].pid for n in cluster.node_ids}
    cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _worker(session, target, headers, f"{tag}-w{w}", batch, until, latencies, errors)
                for w in range(workers)
            )
        )
    cpu_used = {n: cpu_seconds(pid) - cpu_before[n] for n, pid in pids.items()}
    cluster.wait_converged()
    syncs = sum(_follower_syncs(cluster, n) for n in followers) - syncs_before
    entries = len(latencies)
    ordered = sorted(latencies) or [0.0]
    return Run(
        durability=durability,
        workers=workers,
        batch=batch,
        seconds=seconds,
        entries=entries,
        entries_per_s=entries / seconds,
        commands_per_s=entries * batch / seconds,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        follower_fsyncs_per_entry=syncs / len(followers) / max(entries, 1),
        leader_cpu_us_per_entry=cpu_used[leader] / max(entries, 1) * 1e6,
        nodes_cpu_us_per_entry=sum(cpu_used.values()) / max(entries, 1) * 1e6,
        errors=errors,
    )


def _follower_syncs(cluster: LocalCluster, node_id: str) -> float:
    found = re.search(r"flashsale_node_journal_sync_seconds_count (\S+)", cluster.metrics(node_id))
    return float(found.group(1)) if found else 0.0


def bench(seconds: float) -> list[Run]:
    """Run every workload under both durability modes; returns the measurements."""
    runs = []
    for durability in ("fsync", "os"):
        with tempfile.TemporaryDirectory(prefix=f"bench-{durability}-") as tmp:
            cluster = LocalCluster(Path(tmp), 3, durability=durability)
            try:
                cluster.start()
                cluster.submit(
                    [
                        {
                            "type": "create_product",
                            "key": "create-bench",
                            "product_id": "bench",
                            "name": "Bench",
                            "price_minor": 100,
                            "total_stock": 1_000_000_000,
                        }
                    ]
                )
                for i, (workers, batch) in enumerate(WORKLOADS):
                    tag = f"{durability}{i}"
                    run = asyncio.run(_measure(cluster, durability, workers, batch, seconds, tag))
                    runs.append(run)
                    print(_row(run), flush=True)
            finally:
                cluster.kill_all()
    return runs


HEADER = (
    "| durability | workers | commands/entry | entries/s | commands/s | p50 ms | p99 ms "
    "| follower fsyncs/entry | leader CPU us/entry | 3 nodes' CPU us/entry |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _row(r: Run) -> str:
    return (
        f"| {r.durability} | {r.workers} | {r.batch} | {r.entries_per_s:,.0f} | "
        f"{r.commands_per_s:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
        f"{r.follower_fsyncs_per_entry:.2f} | {r.leader_cpu_us_per_entry:,.0f} | "
        f"{r.nodes_cpu_us_per_entry:,.0f} |" + (f" errors: {r.errors}" if r.errors else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_durability")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each run")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    runs = bench(args.seconds)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
