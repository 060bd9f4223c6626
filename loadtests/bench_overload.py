"""Overload: what happens at two to three times what the machine sustains. Not a test:
numbers, printed as Markdown (docs/BENCHMARKS.md, "Overload").

Run from the repository root: ``python -m loadtests.bench_overload`` (``make overload``).

It starts a real 3-node cluster (tests/support/cluster.py, default settings, fsync
durability, ``[bots] enabled = false``: trusted load), ``--gateways`` gateways (1) with
their default admission limits and, with ``--front haproxy`` (the default), HAProxy in
front of them (loadtests/harness/haproxy.py: separate read and write slots per gateway, a
short queue, then 503 ``overloaded`` with Retry-After), creates two products (``big``:
10^8 units, never sells out, so its reserves reach the leader all run long; ``small``:
300 units, sold out early, after which the edge cache refuses its reserves), and drives a
reserve-heavy mix: 50 % reserves of ``big``, 20 % reserves of ``small``, 30 % inventory
reads, each reserve a fresh Idempotency-Key, a shopper holding at most
``HOLDS_PER_USER`` units.

The client is *open-loop*: requests arrive at a fixed rate whatever the answers do
(each on a free keep-alive connection, a new one if none is free, up to
``--max-connections``), as shoppers do, so a slow server is not granted a slower
client; latency is counted from the request's scheduled arrival, so time spent waiting
for a connection counts too. It speaks minimal HTTP/1.1 through asyncio Protocols on
uvloop (loadtests/harness/open_loop.py: no HTTP library, no task per request), to take
as little as it can of the cores it shares with the servers; ``--pin servers`` gives it
a core of its own and the servers the other.

Phases:
1. Ramp: ``--ramp-seconds`` per step at rising rates (x1.5 per step from
   ``--ramp-start``). A step is sustained when at least 97 % of its requests were served
   (2xx, or the sale's own answers such as 409 sold-out), none timed out, and the p99 of
   served requests stayed under ``--p99-ms``. The sustainable rate is the last sustained
   step's.
2. Sustainable: ``--baseline-seconds`` at that rate: the reference p99. If this longer
   run is not sustained by the same rule, the rate steps down (x1/1.5) and it runs again
   (at most ``BASELINE_TRIES`` times).
3. Overload: ``--seconds`` at ``--factor`` times that rate.
4. Recovery: ``--recovery-seconds`` at the sustainable rate again.

Reported: per phase, offered and served requests, shed (503/429: with and without
Retry-After), other failures, p50/p99 of served requests; each process's RSS sampled
every second (peak per phase), its CPU seconds per phase (the client's too) and its VmHWM
at the end; HAProxy's queue and timings, sampled every second; the gateway's own view
(its handlers' p99, its event loop's lag, its write cap: the first gateway's, with
``--gateways`` above 1); whether every process is still alive; and the sale: on every
node sold + reserved + available == stock for both products, the nodes' digests equal,
``small`` not oversold, and the units reserved or sold equal to the holds the client was
granted (plus at most the answers it could not know: 503 commit-unknown and timeouts).
Every process is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import platform
import re
import resource
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from gateway.identity import issue_token
from loadtests.harness import haproxy
from loadtests.harness.machine import cpu_seconds, loadavg, own_core
from loadtests.harness.open_loop import Answer, OpenLoop
from tests.support.cluster import LocalCluster, free_ports

BIG, SMALL = "big", "small"
BIG_STOCK, SMALL_STOCK = 100_000_000, 300
HOLD_TTL_MS = 3_600_000  # no hold expires during a run: reserved + sold = holds granted
HOLDS_PER_USER = 90  # below ledger.limits.MAX_HOLDS_PER_CART (100)
REQUEST_TIMEOUT_S = 30.0  # above the gateway's 10 s write deadline: every request is answered
TICK_S = 0.002  # the arrival loop's granularity
SAMPLE_S = 1.0  # RSS sampling period
SUSTAINED_SHARE = 0.97  # a ramp step is sustained when this share of it was served
BASELINE_TRIES = 3  # sustainable-rate runs, stepping down, before overloading
MIX = ((0.5, "reserve", BIG), (0.2, "reserve", SMALL), (0.15, "inventory", BIG),
       (0.15, "inventory", SMALL))  # fmt: skip


# -- the open-loop client ------------------------------------------------------------------


class Requests:
    """Builds the mix's raw requests: a fresh Idempotency-Key per reserve, a new shopper
    every ``HOLDS_PER_USER`` reserves."""

    def __init__(self, secret: str, host: str, run: str) -> None:
        self._secret, self._host, self._run = secret, host, run
        self._n = 0
        self._user = ""
        self._token = ""

    def reserve(self, product: str) -> bytes:
        if self._n % HOLDS_PER_USER == 0:
            self._user = f"{self._run}u{self._n // HOLDS_PER_USER}"
            self._token = issue_token(self._secret, self._user, 3600)
        self._n += 1
        body = json.dumps({"user_id": self._user, "product_id": product, "quantity": 1},
                          separators=(",", ":")).encode()  # fmt: skip
        return (
            f"POST /reserve-inventory HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Authorization: Bearer {self._token}\r\nIdempotency-Key: {self._run}k{self._n}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def inventory(self, product: str) -> bytes:
        return f"GET /inventory/{product} HTTP/1.1\r\nHost: {self._host}\r\n\r\n".encode()


# -- phases --------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    rate: float
    seconds: float
    offered: int = 0
    served: int = 0  # 2xx and the sale's own answers (409 sold-out, limit...)
    shed: int = 0  # 503/429 with Retry-After
    shed_without_retry_after: int = 0
    unknown: int = 0  # 503 commit-unknown, or no answer in time
    not_sent: int = 0  # no free connection within --max-connections
    failures: dict[str, int] = field(default_factory=dict)
    granted: dict[str, int] = field(default_factory=dict)  # holds placed, per product
    uncertain: dict[str, int] = field(default_factory=dict)  # holds maybe placed
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p99_reserve_ms: float = 0.0
    p99_inventory_ms: float = 0.0
    rss_peak_mb: dict[str, float] = field(default_factory=dict)
    cpu_at_start: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process, "client" too
    front: list[dict[str, int]] = field(default_factory=list)  # HAProxy, once a second
    peak_connections: int = 0
    client_lag_ms: float = 0.0  # how late the arrival loop ran at worst (client starved)
    gateway_p99_ms: float = 0.0  # p99 of the gateway's own handling time (its histogram)
    write_limit_at_end: float | None = None  # the gateway's adaptive write cap then
    gateway_lag_p99_ms: float = 0.0  # p99 of its event loop's lag (a bucket's bound)

    @property
    def served_share(self) -> float:
        return self.served / self.offered if self.offered else 0.0


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


SALE_ANSWERS = {"sold-out", "limit-reached"}


async def run_phase(
    http: OpenLoop, requests: Requests, phase: Phase, sample: Callable[[Phase], None]
) -> Phase:
    """Offer ``phase.rate`` requests/s for ``phase.seconds``, open-loop; fill ``phase``."""
    loop = asyncio.get_running_loop()
    latencies: dict[str, list[float]] = {"reserve": [], "inventory": []}

    def account(kind: str, product: str, due: float, answer: Answer | None, label: str) -> None:
        counts = phase.by_kind.setdefault(f"{kind} {product}", {})
        if answer is None:
            if label == "not-sent":
                phase.not_sent += 1
            elif label == "timeout" and kind == "reserve":
                phase.unknown += 1
                phase.uncertain[product] = phase.uncertain.get(product, 0) + 1
            else:
                phase.failures[label] = phase.failures.get(label, 0) + 1
            counts[label] = counts.get(label, 0) + 1
            return
        outcome = str(answer.status) + (f" {answer.problem}" if answer.problem else "")
        counts[outcome] = counts.get(outcome, 0) + 1
        if answer.status < 300 or answer.problem in SALE_ANSWERS:
            phase.served += 1
            latencies[kind].append(loop.time() - due)
            if kind == "reserve" and answer.status == 200:
                phase.granted[product] = phase.granted.get(product, 0) + 1
        elif answer.status in (429, 503) and answer.problem == "commit-unknown":
            phase.unknown += 1
            phase.uncertain[product] = phase.uncertain.get(product, 0) + 1
        elif answer.status in (429, 503):
            if answer.retry_after:
                phase.shed += 1
            else:
                phase.shed_without_retry_after += 1
        else:
            phase.failures[outcome] = phase.failures.get(outcome, 0) + 1

    weights = [w for w, _, _ in MIX]
    start = loop.time()
    end = start + phase.seconds
    next_sample = start
    n = 0
    acc = 0.0
    while (now := loop.time()) < end:
        if n:
            phase.client_lag_ms = max(phase.client_lag_ms, (now - start - n / phase.rate) * 1000)
        due_count = int((now - start) * phase.rate) - n
        for _ in range(max(0, due_count)):
            due = start + n / phase.rate
            # A fixed, deterministic walk through the mix (no randomness to seed).
            acc = (acc + 0.618033988749895) % 1.0
            cumulative, pick = 0.0, MIX[-1]
            for w, item in zip(weights, MIX, strict=True):
                cumulative += w
                if acc < cumulative:
                    pick = item
                    break
            _, kind, product = pick
            raw = requests.reserve(product) if kind == "reserve" else requests.inventory(product)
            http.submit(raw, functools.partial(account, kind, product, due))
            n += 1
        if now >= next_sample:
            sample(phase)
            next_sample += SAMPLE_S
        await asyncio.sleep(TICK_S)
    phase.offered = n
    await http.drained()
    sample(phase)
    everything = sorted(latencies["reserve"] + latencies["inventory"])
    phase.p50_ms = _pct(everything, 0.50) * 1000
    phase.p99_ms = _pct(everything, 0.99) * 1000
    phase.p99_reserve_ms = _pct(sorted(latencies["reserve"]), 0.99) * 1000
    phase.p99_inventory_ms = _pct(sorted(latencies["inventory"]), 0.99) * 1000
    phase.peak_connections = http.peak_open
    http.peak_open = http.open
    return phase


# -- processes -----------------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _pids(cluster: LocalCluster) -> dict[str, int]:
    return {proc_id: proc.pid for proc_id, proc in cluster.procs.items()}


# HAProxy's show stat: now (qcur, scur), averages in ms over its last 1,024 requests
# (qtime...ttime), and totals (connect: connections it opened to the gateways; reuse:
# requests sent on a kept one).
FRONT_FIELDS = ("qcur", "scur", "qtime", "ctime", "rtime", "ttime")
FRONT_TOTALS = ("connect", "reuse")


def _sampler(cluster: LocalCluster) -> Callable[[Phase], None]:
    pids = _pids(cluster)
    front = "haproxy" in cluster.procs

    def sample(phase: Phase) -> None:
        cpu = {"client": _own_cpu_s()}
        for proc_id, pid in pids.items():
            mb = _status_kb(pid, "VmRSS") / 1024
            phase.rss_peak_mb[proc_id] = max(phase.rss_peak_mb.get(proc_id, 0.0), mb)
            cpu[proc_id] = cpu_seconds(pid)
        if front:
            # Once a second, HAProxy's view: requests queued and in service per backend,
            # and its averages (ms, over the last 1,024 requests) of the time spent in
            # its queue, connecting, waiting for the gateway's answer, and in all.
            rows = haproxy.stats(cluster.dir)
            phase.front.append({
                f"{backend} {name}": int(rows[f"{backend}/BACKEND"].get(name) or 0)
                for backend in ("writes", "reads") for name in FRONT_FIELDS + FRONT_TOTALS
            })  # fmt: skip
        # The first sample is the phase's start; each later one updates its CPU so far.
        if not phase.cpu_at_start:
            phase.cpu_at_start = cpu
        else:
            phase.cpu_s = {k: round(v - phase.cpu_at_start[k], 1) for k, v in cpu.items()}

    return sample


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        return str(resp.read().decode())


GATEWAY_ROUTES = ("/reserve-inventory", "/inventory/{product_id}")
_BUCKET = re.compile(
    r'^flashsale_gateway_request_duration_seconds_bucket\{le="([^"]*)",route="([^"]*)"\} (\S+)$',
    re.M,
)


_LAG_BUCKET = re.compile(
    r'^flashsale_gateway_event_loop_lag_seconds_bucket\{le="([^"]*)"\} (\S+)$', re.M
)


def _gateway_buckets(url: str) -> dict[tuple[str, float], float]:
    """The gateway's own request-duration histogram (handler time, inside the gateway),
    and its event-loop lag histogram (as route "lag")."""
    text = _metrics(url)
    out: dict[tuple[str, float], float] = {}
    for le, route, value in _BUCKET.findall(text):
        if route in GATEWAY_ROUTES:
            out[(route, float(le))] = float(value)
    for le, value in _LAG_BUCKET.findall(text):
        out[("lag", float(le))] = float(value)
    return out


def _split_lag(
    buckets: dict[tuple[str, float], float],
) -> tuple[dict[tuple[str, float], float], dict[tuple[str, float], float]]:
    routes = {k: v for k, v in buckets.items() if k[0] != "lag"}
    return routes, {k: v for k, v in buckets.items() if k[0] == "lag"}


def _bucket_p99_ms(
    before: dict[tuple[str, float], float], after: dict[tuple[str, float], float]
) -> float:
    """The p99 (as a bucket's upper bound) of requests answered between two scrapes."""
    totals: dict[float, float] = {}
    for (route, le), value in after.items():
        totals[le] = totals.get(le, 0.0) + value - before.get((route, le), 0.0)
    count = totals.get(float("inf"), 0.0)
    for le in sorted(totals):
        if count and totals[le] >= 0.99 * count:
            return le * 1000
    return 0.0


def _metric_sum(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        out[labels or ""] = out.get(labels or "", 0.0) + float(value)
    return out


# -- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    machine: str
    load_before: str
    load_after: str = ""
    sustainable_rate: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    vm_hwm_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    client_cpu_s: float = 0.0  # this process (the load generator), same cores
    pinned: bool = False  # servers on one core, the client on the other (--pin servers)
    alive: dict[str, bool] = field(default_factory=dict)
    sale: dict[str, Any] = field(default_factory=dict)
    gateway_counters: dict[str, Any] = field(default_factory=dict)
    node_refusals: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


def _sustained(phase: Phase, p99_ms: float) -> bool:
    return (
        phase.served_share >= SUSTAINED_SHARE
        and phase.unknown == 0
        and not phase.failures
        and phase.p99_ms <= p99_ms
    )


async def _drive(
    args: argparse.Namespace, cluster: LocalCluster, target: tuple[str, int], results: Results
) -> None:
    """The phases, against ``target`` (HAProxy's address, or the one gateway's)."""
    host, port = target
    sample = _sampler(cluster)
    requests = Requests(cluster.secret, f"{host}:{port}", f"r{int(time.time())}")
    with OpenLoop(host, port, args.max_connections, REQUEST_TIMEOUT_S) as http:
        rate = args.ramp_start
        sustainable = 0.0
        for step in range(1, args.ramp_steps + 1):
            phase = await run_phase(http, requests, Phase(f"ramp {step}", rate,
                                                          args.ramp_seconds), sample)  # fmt: skip
            results.phases.append(phase)
            print(_row(phase), flush=True)
            if not _sustained(phase, args.p99_ms):
                break
            sustainable = rate
            rate *= 1.5
            await asyncio.sleep(1.0)  # let the last answers and batches settle
        if sustainable == 0.0:
            raise RuntimeError(f"not even {args.ramp_start}/s was sustained")
        url = cluster.config.gateways[0].listen.url

        async def measured(name: str, phase_rate: float, seconds: float) -> Phase:
            await asyncio.sleep(2.0)  # the previous phase's answers and batches settle
            before = await asyncio.to_thread(_gateway_buckets, url)
            phase = await run_phase(http, requests, Phase(name, phase_rate, seconds), sample)
            after = await asyncio.to_thread(_gateway_buckets, url)
            (routes_before, lag_before), (routes_after, lag_after) = map(
                _split_lag, (before, after)
            )
            phase.gateway_p99_ms = _bucket_p99_ms(routes_before, routes_after)
            phase.gateway_lag_p99_ms = _bucket_p99_ms(lag_before, lag_after)
            text = await asyncio.to_thread(_metrics, url)
            phase.write_limit_at_end = _metric_sum(text, "flashsale_gateway_write_limit").get("")
            results.phases.append(phase)
            return phase

        # A short step can pass at a rate a longer run cannot hold: the baseline must be
        # sustained too, or the rate steps down (x1/1.5) and the baseline is run again.
        for attempt in range(1, BASELINE_TRIES + 1):
            baseline = await measured("sustainable", sustainable, args.baseline_seconds)
            if (
                _sustained(baseline, args.p99_ms)
                or attempt == BASELINE_TRIES
                or sustainable <= args.ramp_start
            ):
                print(_row(baseline), flush=True)
                break
            baseline.name = "sustainable? (not held)"
            print(_row(baseline), flush=True)
            sustainable /= 1.5
        results.sustainable_rate = sustainable
        for name, rate, seconds in (
            (f"overload {args.factor:g}x", sustainable * args.factor, args.seconds),
            ("recovery", sustainable, args.recovery_seconds),
        ):
            print(_row(await measured(name, rate, seconds)), flush=True)


def _check_sale(cluster: LocalCluster, results: Results) -> None:
    index, digest = cluster.wait_converged(timeout_s=60)
    granted = {p: sum(ph.granted.get(p, 0) for ph in results.phases) for p in (BIG, SMALL)}
    uncertain = {p: sum(ph.uncertain.get(p, 0) for ph in results.phases) for p in (BIG, SMALL)}
    stock = {BIG: BIG_STOCK, SMALL: SMALL_STOCK}
    per_node: dict[str, Any] = {}
    conserved = True
    exact = True
    for node_id in cluster.node_ids:
        views = {}
        for pid in (BIG, SMALL):
            p = cluster.get(node_id, f"/v1/products/{pid}")["product"]
            views[pid] = {k: p[k] for k in ("sold", "reserved", "available", "total_stock")}
            conserved &= p["sold"] + p["reserved"] + p["available"] == stock[pid]
            taken = p["sold"] + p["reserved"]
            exact &= granted[pid] <= taken <= granted[pid] + uncertain[pid]
        per_node[node_id] = views
    small = per_node[cluster.node_ids[0]][SMALL]
    results.sale = {
        "ledger_index": index,
        "digest": digest[:16],
        "granted_by_client": granted,
        "uncertain_at_client": uncertain,
        "nodes": per_node,
    }
    results.checks["conservation on every node"] = conserved
    results.checks["digests equal"] = True  # wait_converged raised otherwise
    results.checks["small not oversold"] = small["sold"] + small["reserved"] <= SMALL_STOCK
    results.checks["holds granted == units taken (within unknowns)"] = exact


def bench(args: argparse.Namespace) -> Results:
    results = Results(machine=_machine(), load_before=loadavg())
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        limits = {
            k: v
            for k, v in (("max_in_flight_requests", args.max_in_flight_requests),
                         ("max_in_flight_writes", args.max_in_flight_writes),
                         ("write_latency_target_ms", args.write_latency_target_ms),
                         ("loop_lag_tick_ms", args.loop_lag_tick_ms))
            if v is not None
        }  # fmt: skip
        cluster = LocalCluster(Path(tmp), 3, gateways=args.gateways,
                               gateway_settings=limits or None)  # fmt: skip
        try:
            cluster.start()
            gw = cluster.config.gateways[0]
            for g in cluster.config.gateways:
                _wait_ready(g.listen.url)
            for pid, total in ((BIG, BIG_STOCK), (SMALL, SMALL_STOCK)):
                answer = cluster.submit([{
                    "type": "create_product", "key": f"create-{pid}", "product_id": pid,
                    "name": pid.title(), "price_minor": 100, "total_stock": total,
                    "hold_ttl_ms": HOLD_TTL_MS,
                }])  # fmt: skip
                assert answer["results"][0]["ok"], answer
            time.sleep(1.0)  # the edge cache learns both products
            target = (gw.listen.host, gw.listen.port)
            if args.front == "haproxy":
                (port,) = free_ports(1)
                haproxy.start(cluster, f"127.0.0.1:{port}", haproxy.FrontLimits(
                    write_slots=args.write_slots, read_slots=args.read_slots,
                    queue_ms=args.queue_ms))  # fmt: skip
                target = ("127.0.0.1", port)
            pids = _pids(cluster)
            cpu_before = {k: cpu_seconds(v) for k, v in pids.items()}
            client_before = _own_cpu_s()
            # --pin servers: every server process on one core, this client alone on the
            # other, so that "what the machine sustains" is one core's worth of servers
            # and the client's own lateness is not in the servers' latency.
            pin = own_core(list(pids.values()), []) if args.pin == "servers" else (
                contextlib.nullcontext(False))  # fmt: skip
            with pin as pinned:
                results.pinned = bool(pinned)
                uvloop.run(_drive(args, cluster, target, results))
            results.client_cpu_s = round(_own_cpu_s() - client_before, 1)
            results.cpu_s = {k: round(cpu_seconds(v) - cpu_before[k], 1) for k, v in pids.items()}
            results.vm_hwm_mb = {
                k: round(_status_kb(v, "VmHWM") / 1024, 1) for k, v in pids.items()
            }
            results.alive = {k: cluster.is_running(k) for k in pids}
            results.checks["every process alive"] = all(results.alive.values())
            results.checks["every shed answer had Retry-After"] = not any(
                p.shed_without_retry_after for p in results.phases
            )
            results.checks["no failed request (errors, resets)"] = not any(
                p.failures for p in results.phases
            )
            gw_text = _metrics(gw.listen.url)
            results.gateway_counters = {
                "requests_shed": _metric_sum(gw_text, "flashsale_gateway_requests_shed_total"),
                "write_queue_shed_total": _metric_sum(gw_text, "flashsale_gateway_shed_total"),
                "batches_total": _metric_sum(gw_text, "flashsale_gateway_batches_total"),
            }
            results.node_refusals = {
                n: _metric_sum(cluster.metrics(n), "flashsale_node_admission_refused_total")
                for n in cluster.node_ids
            }
            _check_sale(cluster, results)
            cluster.stop()
        finally:
            cluster.kill_all()  # by pid, every process this run started
    results.load_after = loadavg()
    return results


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/readyz", timeout=2):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/readyz never answered 200")
        time.sleep(0.2)


def _machine() -> str:
    cpus = len(Path("/proc/cpuinfo").read_text().split("processor\t:")) - 1
    return f"{cpus} vCPUs, Python {platform.python_version()}, Linux {platform.release()}"


# -- output --------------------------------------------------------------------------------

HEADER = (
    "| phase | offered/s | offered | served | served/s | shed (Retry-After) | shed without | "
    "unknown | other failures | not sent | p50 ms | p99 ms | p99 reserve | p99 inventory | "
    "peak connections | client lag ms | gateway's own p99 ms |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _row(p: Phase) -> str:
    return (
        f"| {p.name} | {p.rate:,.0f} | {p.offered:,} | {p.served:,} ({p.served_share:.0%}) | "
        f"{p.served / p.seconds:,.0f} | "
        f"{p.shed:,} | {p.shed_without_retry_after} | {p.unknown} | "
        f"{json.dumps(p.failures) if p.failures else 0} | {p.not_sent} | {p.p50_ms:,.0f} | "
        f"{p.p99_ms:,.0f} | {p.p99_reserve_ms:,.0f} | {p.p99_inventory_ms:,.0f} | "
        f"{p.peak_connections} | {p.client_lag_ms:,.0f} | "
        f"{'≤ ' + format(p.gateway_p99_ms, ',.0f') if p.gateway_p99_ms else '-'} |"
    )


def report(results: Results) -> str:
    procs = sorted(results.vm_hwm_mb)
    lines = [HEADER, *(_row(p) for p in results.phases), ""]
    lines.append("| process | " + " | ".join(procs) + " |")
    lines.append("|---|" + "---:|" * len(procs))
    for phase in results.phases:
        if phase.name.startswith("ramp"):
            continue
        peaks = " | ".join(f"{phase.rss_peak_mb.get(p, 0):,.0f}" for p in procs)
        lines.append(f"| peak RSS MB, {phase.name} | {peaks} |")
    lines.append("| VmHWM MB at the end | "
                 + " | ".join(f"{results.vm_hwm_mb[p]:,.0f}" for p in procs) + " |")  # fmt: skip
    for phase in results.phases:
        if not phase.name.startswith("ramp"):
            used = " | ".join(f"{phase.cpu_s.get(p, 0):,.1f}" for p in procs)
            lines.append(f"| CPU s, {phase.name} (client {phase.cpu_s.get('client', 0):,.1f}) "
                         f"| {used} |")  # fmt: skip
    lines.append("| CPU s used in the run | "
                 + " | ".join(f"{results.cpu_s[p]:,.1f}" for p in procs) + " |")  # fmt: skip
    alive = " | ".join("yes" if results.alive[p] else "**no**" for p in procs)
    lines.append(f"| alive at the end | {alive} |")
    caps = ", ".join(
        f"{p.name} {p.write_limit_at_end:.0f}"
        for p in results.phases
        if p.write_limit_at_end is not None
    )
    for phase in results.phases:
        if phase.front and not phase.name.startswith("ramp"):
            worst = {
                k: (phase.front[-1][k] - phase.front[0][k]) if k.endswith(FRONT_TOTALS)
                else max(s[k] for s in phase.front)
                for k in phase.front[0]
            }  # fmt: skip
            lines.append(f"haproxy, {phase.name}, worst of its samples (totals: the "
                         f"phase's): {json.dumps(worst)}")  # fmt: skip
    lines += [
        "",
        f"sustainable rate: {results.sustainable_rate:,.0f} requests/s",
        f"load generator CPU s (this process): {results.client_cpu_s}, "
        + ("on a core of its own (--pin servers)" if results.pinned else "same cores"),
        "gateway write cap at the end of each phase: " + caps,
        "gateway event-loop lag p99 per phase (bucket bound, ms): "
        + ", ".join(
            f"{p.name} {p.gateway_lag_p99_ms:,.0f}"
            for p in results.phases
            if not p.name.startswith("ramp")
        ),
        f"gateway counters: {json.dumps(results.gateway_counters)}",
        f"node admission refusals: {json.dumps(results.node_refusals)}",
        f"sale: {json.dumps(results.sale)}",
        f"checks: {json.dumps(results.checks)}",
        f"load average (1, 5, 15 min): before {results.load_before}, after {results.load_after}",
        f"machine: {results.machine}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_overload", description=(
        "Open-loop overload of a local 3-node cluster and one gateway: find the sustainable "
        "rate of a reserve-heavy mix, then offer a multiple of it."))  # fmt: skip
    parser.add_argument("--factor", type=float, default=2.5, help="overload = factor x sustained")
    parser.add_argument("--seconds", type=float, default=60.0, help="overload phase length")
    parser.add_argument("--ramp-start", type=float, default=100.0, help="first ramp rate, req/s")
    parser.add_argument("--ramp-steps", type=int, default=10, help="at most this many steps")
    parser.add_argument("--ramp-seconds", type=float, default=10.0, help="length of a step")
    parser.add_argument(
        "--p99-ms",
        type=float,
        default=500.0,
        help="a sustained step's p99 of served requests stays under this",
    )
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--recovery-seconds", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=4000)
    parser.add_argument(
        "--max-in-flight-requests",
        type=int,
        help="[gateway] max_in_flight_requests (default: the config's)",
    )
    parser.add_argument(
        "--max-in-flight-writes",
        type=int,
        help="[gateway] max_in_flight_writes (default: the config's)",
    )
    parser.add_argument(
        "--write-latency-target-ms",
        type=int,
        help="[gateway] write_latency_target_ms (default: the config's)",
    )
    parser.add_argument(
        "--loop-lag-tick-ms",
        type=int,
        help="[gateway] loop_lag_tick_ms (default: the config's; 0: the write"
        " cap does not count the event loop's lag)",
    )
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes")
    parser.add_argument(
        "--front", choices=("none", "haproxy"), default="haproxy",
        help="haproxy (the default): the client talks to HAProxy in front of the gateways "
        "(Debian's haproxy package; loadtests/harness/haproxy.py); none: to one gateway",
    )  # fmt: skip
    front = haproxy.FrontLimits()
    parser.add_argument("--write-slots", type=int, default=front.write_slots,
                        help="with --front haproxy: writes in flight per gateway")  # fmt: skip
    parser.add_argument("--read-slots", type=int, default=front.read_slots,
                        help="with --front haproxy: reads in flight per gateway")  # fmt: skip
    parser.add_argument("--queue-ms", type=int, default=front.queue_ms,
                        help="with --front haproxy: longest wait for a slot, then 503")  # fmt: skip
    parser.add_argument(
        "--pin", choices=("none", "servers"), default="none",
        help="servers: every server process on one core, the load generator on the other",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.gateways > 1 and args.front == "none":
        parser.error("--gateways above 1 needs --front haproxy (the client talks to one address)")
    print(f"machine: {_machine()}; load average {loadavg()}", flush=True)
    print(HEADER, flush=True)
    results = bench(args)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    print()
    print(report(results), flush=True)
    return 0 if all(results.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
