"""Gateway throughput: reserves with micro-batching against batching off, and inventory
reads against a bare aiohttp handler. Not a test: numbers, printed as Markdown.

Run from the repository root: ``python -m loadtests.bench_gateway [--seconds 10]``.

It starts a real 3-node cluster (tests/support/cluster.py, default settings, fsync
durability) and one gateway process in front of it, creates one product with plenty of
stock, then:

1. Reserves. ``--shoppers`` concurrent shoppers (default 64) each send
   ``POST /reserve-inventory`` (quantity 1, a fresh Idempotency-Key each time; a shopper
   moves to a new user id every ``HOLDS_PER_USER`` holds to stay under the ledger's
   per-cart limit) back to back for ``--seconds``, once against a gateway with the
   default ``[gateway]`` settings (micro-batching: 2 ms window, up to 500 commands per
   Raft entry) and once against the same gateway restarted with ``max_batch = 1`` (one
   command per Raft entry: batching off). The client is aiohttp on uvloop in this
   process. Reported: reserves/s, latency percentiles as the shopper saw them, and the
   mean commands per Raft entry (the gateway's batch-size histogram).
2. Reads. ``GET /inventory/{id}`` from the gateway (answered from its edge cache) against
   a bare aiohttp + uvloop server in a separate process whose one handler returns the
   very same bytes and headers, both driven by ``wrk`` (``--connections`` connections,
   one thread) when it is installed, else by an aiohttp client pool in this process.
   Reported: requests/s, latency percentiles, and the gateway/bare ratio.

Each pair runs ``--rounds`` times, alternating, so drift in the machine's load hits both
sides. Client, cluster and gateway share the machine's cores: absolute numbers are
floors; the ratios are the result. The load average before and after is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import uvloop

from gateway.identity import issue_token
from loadtests.harness.processes import spawn as _spawn
from loadtests.harness.processes import start_gateway
from loadtests.harness.processes import stop as _stop
from loadtests.harness.processes import wait_ok as _wait_ok
from loadtests.harness.stats import percentile as _percentile
from tests.support.cluster import LocalCluster, free_ports

__all__ = ["_spawn", "_stop", "_wait_ok"]  # bench_payments starts its processes with these

PRODUCT = "bench"
STOCK = 100_000_000
HOLDS_PER_USER = 90  # below ledger.limits.MAX_HOLDS_PER_CART (100)
REQUEST_TIMEOUT_S = 30.0
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(95)),
    math.floor(latency:percentile(99))))
end
"""


@dataclass(frozen=True)
class ReserveRun:
    mode: str  # "batched" or "unbatched"
    round_no: int
    shoppers: int
    seconds: float
    ok: int
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    commands_per_entry: float
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadRun:
    target: str  # "gateway" or "bare"
    round_no: int
    tool: str
    connections: int
    seconds: float
    requests: int
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _start_gateway(cluster: LocalCluster, env: Mapping[str, str]) -> str:
    return start_gateway(cluster, cluster.config.gateways[0].id, env)


# -- reserves ---------------------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _batch_totals(base: str) -> tuple[float, float]:
    # A session of its own: the shoppers' pool is busy, and this must not wait behind it.
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
        text = await resp.text()
    return (
        _metric(text, "flashsale_gateway_batch_size_sum"),
        _metric(text, "flashsale_gateway_batch_size_count"),
    )


async def _shopper(
    session: aiohttp.ClientSession,
    url: str,
    secret: str,
    prefix: str,
    measure_from: float,
    until: float,
    latencies: list[float],
    errors: dict[str, int],
) -> None:
    n = 0
    token = ""
    while (start := time.monotonic()) < until:
        user = f"{prefix}-u{n // HOLDS_PER_USER}"
        if n % HOLDS_PER_USER == 0:
            token = issue_token(secret, user, 3600)
        n += 1
        body = {"user_id": user, "product_id": PRODUCT, "quantity": 1}
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"k{n}"}
        started = time.perf_counter()
        async with session.post(url, json=body, headers=headers) as resp:
            answer = await resp.read()
            status = resp.status
        elapsed = time.perf_counter() - started
        if start < measure_from:
            continue
        if status == 200:
            latencies.append(elapsed)
        else:
            kind = ""
            try:
                kind = str(json.loads(answer).get("type", "")).rsplit("/", 1)[-1]
            except (ValueError, AttributeError):
                kind = "not-json"
            label = f"{status} {kind}".strip()
            errors[label] = errors.get(label, 0) + 1


async def _reserve_run(
    base: str, secret: str, mode: str, round_: int, shoppers: int, warmup_s: float,
    seconds: float,
) -> ReserveRun:  # fmt: skip
    latencies: list[float] = []
    errors: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=shoppers)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        measure_from = time.monotonic() + warmup_s
        until = measure_from + seconds
        warm = asyncio.get_running_loop().create_task(asyncio.sleep(warmup_s))
        tasks = [
            _shopper(session, base + "/reserve-inventory", secret, f"{mode}{round_}s{i}",
                     measure_from, until, latencies, errors)
            for i in range(shoppers)
        ]  # fmt: skip
        runner = asyncio.gather(*tasks)
        await warm
        sum_before, count_before = await _batch_totals(base)
        await runner
        sum_after, count_after = await _batch_totals(base)
    ordered = sorted(latencies)
    batches = count_after - count_before
    return ReserveRun(
        mode=mode,
        round_no=round_,
        shoppers=shoppers,
        seconds=seconds,
        ok=len(ordered),
        per_s=len(ordered) / seconds,
        p50_ms=_percentile(ordered, 0.50) * 1000,
        p95_ms=_percentile(ordered, 0.95) * 1000,
        p99_ms=_percentile(ordered, 0.99) * 1000,
        commands_per_entry=(sum_after - sum_before) / batches if batches else 0.0,
        errors=errors,
    )


# -- reads ------------------------------------------------------------------------------


def _wrk(url: str, connections: int, seconds: float, script: Path) -> dict[str, int]:
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    summary: dict[str, int] = json.loads(lines[-1])
    return summary


async def _pool_reads(url: str, connections: int, warmup_s: float, seconds: float) -> ReadRun:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        measure_from = time.monotonic() + warmup_s
        until = measure_from + seconds

        async def reader() -> None:
            nonlocal errors
            while (start := time.monotonic()) < until:
                started = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    ok = resp.status == 200
                if start >= measure_from:
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1

        await asyncio.gather(*(reader() for _ in range(connections)))
    ordered = sorted(latencies)
    return ReadRun("", 0, "aiohttp", connections, seconds, len(ordered),
                   len(ordered) / seconds, _percentile(ordered, 0.5) * 1000,
                   _percentile(ordered, 0.95) * 1000, _percentile(ordered, 0.99) * 1000,
                   errors)  # fmt: skip


def _read_run(
    target: str, url: str, round_: int, connections: int, warmup_s: float, seconds: float,
    script: Path | None,
) -> ReadRun:  # fmt: skip
    if script is None:
        run = uvloop.run(_pool_reads(url, connections, warmup_s, seconds))
        return ReadRun(target, round_, run.tool, connections, seconds, run.requests, run.per_s,
                       run.p50_ms, run.p95_ms, run.p99_ms, run.errors)  # fmt: skip
    _wrk(url, connections, warmup_s, script)  # warm-up, not counted
    s = _wrk(url, connections, seconds, script)
    duration_s = s["duration_us"] / 1e6
    return ReadRun(target, round_, "wrk", connections, duration_s, s["requests"],
                   s["requests"] / duration_s, s["p50_us"] / 1000, s["p95_us"] / 1000,
                   s["p99_us"] / 1000, s["errors"])  # fmt: skip


# -- the whole run ----------------------------------------------------------------------


@dataclass
class Results:
    machine: dict[str, str]
    load_before: str = ""
    load_after: str = ""
    ledger: str = ""
    reserves: list[ReserveRun] = field(default_factory=list)
    reads: list[ReadRun] = field(default_factory=list)


def _machine() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
        "wrk": shutil.which("wrk") or "(absent: aiohttp client pool)",
    }


def bench(args: argparse.Namespace) -> Results:
    results = Results(machine=_machine(), load_before=_loadavg())
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, gateways=1)
        try:
            for node_id in cluster.node_ids:
                cluster.start_node(node_id, wait=False)
            for node_id in cluster.node_ids:
                cluster.wait_healthy(node_id)
            cluster.wait_for_leader()
            answer = cluster.submit([{
                "type": "create_product", "key": "create-bench", "product_id": PRODUCT,
                "name": "Bench", "price_minor": 100, "total_stock": STOCK,
            }])  # fmt: skip
            assert answer["results"][0]["ok"], answer
            _reserves(cluster, args, results)
            _reads(cluster, args, Path(tmp), results)
            # Everything sold was agreed on: every node holds the same ledger.
            index, digest = cluster.wait_converged()
            results.ledger = f"index {index}, digest {digest[:16]} on all 3 nodes"
            cluster.stop()
        finally:
            cluster.kill_all()
    results.load_after = _loadavg()
    return results


def _reserves(cluster: LocalCluster, args: argparse.Namespace, results: Results) -> None:
    modes = {"batched": {}, "unbatched": {"FLASHSALE_GATEWAY__MAX_BATCH": "1"}}
    gateway_id = cluster.config.gateways[0].id
    for round_ in range(1, args.rounds + 1):
        for mode, env in modes.items():
            base = _start_gateway(cluster, env)
            try:
                run = uvloop.run(
                    _reserve_run(base, cluster.secret, mode, round_, args.shoppers,
                                 args.warmup, args.seconds)
                )  # fmt: skip
            finally:
                _stop(cluster, gateway_id)
            results.reserves.append(run)
            print(_reserve_row(run), flush=True)


def _reads(
    cluster: LocalCluster, args: argparse.Namespace, tmp: Path, results: Results
) -> None:
    base = _start_gateway(cluster, {})
    url = f"{base}/inventory/{PRODUCT}"
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        body = resp.read()
        headers = {k: resp.headers[k] for k in ("X-Ledger-Index", "X-Cache")}
    body_file = tmp / "inventory.json"
    body_file.write_text(json.dumps({"body_hex": body.hex(), "headers": headers}))
    (port,) = free_ports(1)
    listen = f"127.0.0.1:{port}"
    _spawn(cluster, "bare", ["-m", "loadtests.harness.bare", listen, str(body_file)], {})
    bare_url = f"http://{listen}/inventory/{PRODUCT}"
    _wait_ok(cluster, "bare", bare_url)
    script: Path | None = None
    if shutil.which("wrk") and not args.no_wrk:
        script = tmp / "summary.lua"
        script.write_text(WRK_SCRIPT)
    try:
        for round_ in range(1, args.rounds + 1):
            for target, target_url in (("gateway", url), ("bare", bare_url)):
                run = _read_run(target, target_url, round_, args.connections, args.warmup,
                                args.seconds, script)  # fmt: skip
                results.reads.append(run)
                print(_read_row(run), flush=True)
    finally:
        _stop(cluster, "bare")
        _stop(cluster, cluster.config.gateways[0].id)


# -- output -----------------------------------------------------------------------------

RESERVE_HEADER = (
    "| mode | round | shoppers | reserves/s | p50 ms | p95 ms | p99 ms | commands/entry |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)
READ_HEADER = (
    "| target | round | client | connections | requests/s | p50 ms | p95 ms | p99 ms |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|"
)


def _reserve_row(r: ReserveRun) -> str:
    row = (
        f"| {r.mode} | {r.round_no} | {r.shoppers} | {r.per_s:,.0f} | {r.p50_ms:.1f} | "
        f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.commands_per_entry:.1f} |"
    )
    return row + (f" errors: {r.errors}" if r.errors else "")


def _read_row(r: ReadRun) -> str:
    row = (
        f"| {r.target} | {r.round_no} | {r.tool} | {r.connections} | {r.per_s:,.0f} | "
        f"{r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} |"
    )
    return row + (f" errors: {r.errors}" if r.errors else "")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def summary(results: Results) -> str:
    """The ratios the run is for."""
    batched = _median([r.per_s for r in results.reserves if r.mode == "batched"])
    unbatched = _median([r.per_s for r in results.reserves if r.mode == "unbatched"])
    gateway = _median([r.per_s for r in results.reads if r.target == "gateway"])
    bare = _median([r.per_s for r in results.reads if r.target == "bare"])
    lines = [
        f"reserves/s, median: batched {batched:,.0f}, unbatched {unbatched:,.0f} "
        f"(batched/unbatched = {batched / unbatched if unbatched else 0:.2f}x)",
        f"inventory reads/s, median: gateway {gateway:,.0f}, bare aiohttp {bare:,.0f} "
        f"(gateway/bare = {gateway / bare if bare else 0:.2f})",
        f"load average (1, 5, 15 min): before {results.load_before}, "
        f"after {results.load_after}",
        f"ledger at the end: {results.ledger}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_gateway", description=(
        "Reserve throughput with and without micro-batching, and inventory reads against a "
        "bare aiohttp handler, on a local 3-node cluster and one gateway."))  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per run")
    parser.add_argument("--shoppers", type=int, default=64, help="concurrent reserving shoppers")
    parser.add_argument("--connections", type=int, default=64, help="read connections")
    parser.add_argument("--rounds", type=int, default=2, help="alternating repetitions")
    parser.add_argument("--no-wrk", action="store_true", help="read with aiohttp even if wrk")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    print(f"machine: {_machine()}; load average {_loadavg()}", flush=True)
    results = bench(args)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    print()
    print(RESERVE_HEADER)
    for reserve in results.reserves:
        print(_reserve_row(reserve))
    print()
    print(READ_HEADER)
    for read in results.reads:
        print(_read_row(read))
    print()
    print(summary(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
