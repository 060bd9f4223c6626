"""Payment throughput through the gateways against a slow provider. Not a test: numbers.

Run from the repository root: ``python -m loadtests.bench_payments [--seconds 25]``.

It starts a real 3-node cluster (tests/support/cluster.py, default settings, fsync
durability), ``--gateways`` gateway processes (2 by default; ``--gateways 1`` measures
one) and the payments sandbox process (``python -m cli payments-sandbox``) answering
every provider call after ``--latency-ms`` (default 2000, decline rate 0, no webhooks),
with ``[payments] providers = ["stripe", "paypal"]`` (the gateways charge through
Stripe's official package; PayPal is the fail-over). Then:

1. Not timed: one product with enough stock, and ``--orders`` pending orders, each a
   shopper of its own (token from ``gateway.identity.issue_token``) doing
   ``POST /add-to-cart`` (1 unit) and ``POST /checkout`` through a gateway (round-robin),
   ``--prepare-concurrency`` shoppers at a time.
2. Timed: ``--concurrency`` clients (aiohttp on uvloop in this process, one connection
   each) each send ``POST /payment`` for the next unpaid order, back to back, for
   ``--warmup`` + ``--seconds``; only answers that arrive within the last ``--seconds``
   count. Reported: payments/s (200 completed), latency percentiles as the shopper saw
   them (one sandbox latency plus everything the gateway does), errors by status and
   problem type, CPU seconds each process used in the window, and per payment.
3. Checks: the sandbox's charge count equals the number of 200 answers, no order was
   charged twice, and the leader's ledger counts as many units sold (after every
   in-flight payment finished); the three nodes converge on one ledger.

With a provider taking 2 s per charge, a gateway sustains R payments/s only if it keeps
R x 2 s charges in flight: concurrency, not speed, is what this measures. Client,
cluster, gateway and sandbox share the machine's cores: the numbers are floors.

The cluster is a trusted load generator's: ``[bots] enabled = false`` (LocalCluster
writes it; checked below), and the gateways' in-flight caps are fixed at what the
clients send (``gateway_settings``): a payment holds its slot for the provider's 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from cluster.config import GatewaySettings
from gateway.identity import issue_token
from loadtests.bench_gateway import _spawn, _stop, _wait_ok
from loadtests.harness.cluster import add_payments
from tests.support.cluster import LocalCluster

PRODUCT = "bench-pay"
PRICE_MINOR = 2500
STOCK = 1_000_000
PAYMENT_METHOD = "pm_card_visa"
ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "US"}  # fmt: skip
REQUEST_TIMEOUT_S = 60.0
TOKEN_TTL_S = 3600
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Two gateway processes by default: the gateway tier scales out, and on a 2-core machine
# shared with the cluster, the sandbox and the client (and, here, other work) two
# processes get the CPU that one cannot (docs/BENCHMARKS.md, payments section).
DEFAULT_GATEWAYS = 2
PAYMENT_CAP_SPARE = 100  # in-flight writes a gateway admits beyond the clients


@dataclass
class Run:
    gateways: int
    concurrency: int
    latency_ms: int
    warmup_s: float
    seconds: float
    orders: int
    prepare_s: float = 0.0
    completed_in_window: int = 0
    per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    peak_in_flight: int = 0
    completed_total: int = 0  # every 200, window or not
    errors: dict[str, int] = field(default_factory=dict)
    sandbox_charges: int = 0
    max_charges_per_order: int = 0
    ledger_sold: int = 0
    ledger: str = ""
    cpu_s: dict[str, float] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""
    machine: dict[str, str] = field(default_factory=dict)


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _machine() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "kernel": platform.release()}  # fmt: skip


def _label(status: int, raw: bytes) -> str:
    try:
        kind = str(json.loads(raw).get("type", "")).rsplit("/", 1)[-1]
    except (ValueError, AttributeError):
        kind = "not-json"
    return f"{status} {kind}".strip()


# -- set-up -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    gateway: str  # base URL of the gateway that placed it (and is paid through)
    user_id: str
    token: str
    order_id: str
    amount: str


async def _prepare(
    bases: list[str], secret: str, count: int, concurrency: int
) -> tuple[list[Order], dict[str, int]]:
    """``count`` pending orders, one shopper each: add-to-cart then checkout (shopper
    ``n`` through gateway ``n mod len(bases)``)."""
    orders: list[Order] = []
    errors: dict[str, int] = {}
    numbers: Iterator[int] = iter(range(count))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def post(base: str, path: str, body: dict[str, Any], token: str, key: str) -> Any:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
            async with http.post(base + path, json=body, headers=headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    label = f"{path} {_label(resp.status, raw)}"
                    errors[label] = errors.get(label, 0) + 1
                    return None
                return json.loads(raw)

        async def shopper() -> None:
            for n in numbers:
                user = f"payer{n}"
                base = bases[n % len(bases)]
                token = issue_token(secret, user, TOKEN_TTL_S)
                held = await post(base, "/add-to-cart", {"user_id": user, "product_id": PRODUCT,
                                                   "quantity": 1}, token, f"hold{n}")  # fmt: skip
                if held is None:
                    continue
                order = await post(base, "/checkout", {
                    "user_id": user, "cart_id": held["cart_id"],
                    "payment_method": PAYMENT_METHOD, "shipping_address": ADDRESS,
                }, token, f"checkout{n}")  # fmt: skip
                if order is not None:
                    orders.append(Order(base, user, token, order["order_id"], order["amount"]))

        await asyncio.gather(*(shopper() for _ in range(concurrency)))
    return orders, errors


# -- the timed part ---------------------------------------------------------------------


async def _pay(orders: list[Order], run: Run, pids: dict[str, int]) -> None:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    todo = iter(orders)
    in_flight = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    # One connection per client: the pool must never be what limits concurrency.
    connector = aiohttp.TCPConnector(limit=run.concurrency + 10)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        start = time.monotonic()
        measure_from = start + run.warmup_s
        until = measure_from + run.seconds

        async def client() -> None:
            nonlocal in_flight
            for order in todo:
                if time.monotonic() >= until:
                    return
                body = {"order_id": order.order_id, "payment_method": PAYMENT_METHOD,
                        "amount": order.amount}  # fmt: skip
                headers = {"Authorization": f"Bearer {order.token}",
                           "Idempotency-Key": f"pay-{order.order_id}"}  # fmt: skip
                in_flight += 1
                run.peak_in_flight = max(run.peak_in_flight, in_flight)
                started = time.perf_counter()
                try:
                    async with http.post(
                        order.gateway + "/payment", json=body, headers=headers
                    ) as resp:
                        raw = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, raw = 0, type(exc).__name__.encode()
                finally:
                    in_flight -= 1
                elapsed = time.perf_counter() - started
                done_at = time.monotonic()
                if status == 200:
                    run.completed_total += 1
                if not measure_from <= done_at < until:
                    if status != 200:
                        label = _label(status, raw) if status else raw.decode()
                        errors[f"{label} (outside window)"] = (
                            errors.get(f"{label} (outside window)", 0) + 1
                        )
                    continue
                if status == 200:
                    latencies.append(elapsed)
                else:
                    label = _label(status, raw) if status else raw.decode()
                    errors[label] = errors.get(label, 0) + 1

        async def cpu_window() -> dict[str, float]:
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
            before = {name: _cpu_s(pid) for name, pid in pids.items()}
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            return {name: _cpu_s(pid) - before[name] for name, pid in pids.items()}

        cpu = asyncio.get_running_loop().create_task(cpu_window())
        await asyncio.gather(*(client() for _ in range(run.concurrency)))
        run.cpu_s = await cpu
    if next(todo, None) is None:
        errors["orders ran out before the window ended"] = 1
    ordered = sorted(latencies)
    run.completed_in_window = len(ordered)
    run.per_s = len(ordered) / run.seconds
    run.p50_ms = _percentile(ordered, 0.50) * 1000
    run.p95_ms = _percentile(ordered, 0.95) * 1000
    run.p99_ms = _percentile(ordered, 0.99) * 1000
    run.max_ms = (ordered[-1] if ordered else 0.0) * 1000
    run.errors = errors


async def _sandbox_stats(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(base + "/_sandbox/stats") as resp:
        stats: dict[str, Any] = await resp.json()
    return stats


def gateway_settings(args: argparse.Namespace) -> dict[str, int]:
    """[gateway] caps (gateway.overload) that admit every payment the clients keep in flight.

    A /payment waits seconds for its provider, not for the cluster, so it has a cap of its
    own (max_in_flight_payments, 2048 by default), outside the write cap and its
    adaptation. The defaults already admit the bench's default concurrency; a larger
    --concurrency raises the cap to match (docs/PAYMENTS.md)."""
    # Clients take the next order whichever gateway placed it, so a slower gateway holds
    # more than its share of them: each gateway admits all of them.
    per_gateway = args.concurrency + PAYMENT_CAP_SPARE
    return {"max_in_flight_payments": max(per_gateway, GatewaySettings().max_in_flight_payments)}


def bench(args: argparse.Namespace) -> Run:
    run = Run(args.gateways, args.concurrency, args.latency_ms, args.warmup, args.seconds,
              args.orders, machine=_machine(), load_before=_loadavg())  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-payments-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, gateways=args.gateways,
                               gateway_settings=gateway_settings(args))  # fmt: skip
        assert not cluster.config.bots.enabled, "the benchmark is a trusted client: [bots] off"
        try:
            sandbox = add_payments(cluster, args.latency_ms)
            _spawn(cluster, "payments-sandbox",
                   ["-m", "cli", "payments-sandbox", "--config", str(cluster.config_path)],
                   {})  # fmt: skip
            _wait_ok(cluster, "payments-sandbox", sandbox + "/healthz")
            cluster.start()
            bases = [g.listen.url for g in cluster.config.gateways]
            for g in cluster.config.gateways:
                _wait_ok(cluster, g.id, g.listen.url + "/readyz")
            answer = cluster.submit([{
                "type": "create_product", "key": "create-bench-pay", "product_id": PRODUCT,
                "name": "Bench", "price_minor": PRICE_MINOR, "total_stock": STOCK,
            }])  # fmt: skip
            assert answer["results"][0]["ok"], answer
            started = time.monotonic()
            orders, prep_errors = uvloop.run(
                _prepare(bases, cluster.secret, args.orders,
                         args.prepare_concurrency)
            )  # fmt: skip
            run.prepare_s = time.monotonic() - started
            print(f"prepared {len(orders)} pending orders in {run.prepare_s:.1f} s"
                  + (f"; errors {prep_errors}" if prep_errors else ""), flush=True)  # fmt: skip
            pids = {name: proc.pid for name, proc in cluster.procs.items()}
            pids["bench client"] = os.getpid()
            uvloop.run(_pay(orders, run, pids))
            stats = uvloop.run(_sandbox_stats(sandbox))
            run.sandbox_charges = int(stats["charges"])
            run.max_charges_per_order = max(stats["charges_by_order"].values(), default=0)
            index, digest = cluster.wait_converged(timeout_s=60.0)
            run.ledger = f"index {index}, digest {digest[:16]} on all 3 nodes"
            leader = cluster.wait_for_leader()
            run.ledger_sold = int(cluster.get(leader, f"/v1/products/{PRODUCT}")["product"]["sold"])
            gateway_ids = [g.id for g in cluster.config.gateways]
            for proc_id in [*gateway_ids, "payments-sandbox", *cluster.node_ids]:
                _stop(cluster, proc_id)
        finally:
            cluster.kill_all()
    run.load_after = _loadavg()
    return run


HEADER = (
    "| gateways | concurrency | provider latency | payments/s | p50 ms | p95 ms | p99 ms | max ms "
    "| errors | charges = 200s | sold = 200s |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
)


def row(r: Run) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "none"
    charges = "yes" if r.sandbox_charges == r.completed_total else "NO"
    sold = "yes" if r.ledger_sold == r.completed_total else "NO"
    return (
        f"| {r.gateways} | {r.concurrency} | {r.latency_ms:,} ms | {r.per_s:,.0f} | "
        f"{r.p50_ms:,.0f} | {r.p95_ms:,.0f} | {r.p99_ms:,.0f} | {r.max_ms:,.0f} | {errors} | "
        f"{charges} ({r.sandbox_charges:,}) | {sold} ({r.ledger_sold:,}) |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_payments", description=(
        "Payments/s through the gateways against the payments sandbox with a slow provider, "
        "on a local 3-node cluster."))  # fmt: skip
    parser.add_argument(
        "--gateways",
        type=int,
        default=DEFAULT_GATEWAYS,
        help="gateway processes (orders are placed and paid round-robin across them)",
    )
    parser.add_argument("--concurrency", type=int, default=900, help="payments in flight")
    parser.add_argument("--latency-ms", type=int, default=2000, help="sandbox latency")
    parser.add_argument("--seconds", type=float, default=25.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured ramp-up")
    parser.add_argument(
        "--orders",
        type=int,
        default=0,
        help="pending orders to prepare (default: enough for the window)",
    )
    parser.add_argument(
        "--prepare-concurrency",
        type=int,
        default=200,
        help="shoppers placing orders at once (not timed)",
    )
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.orders <= 0:
        # Every client completes at most one payment per provider latency; 20 % spare.
        per_client = (args.warmup + args.seconds) / (args.latency_ms / 1000) + 1
        args.orders = int(args.concurrency * per_client * 1.2)
    print(f"machine: {_machine()}; load average {_loadavg()}", flush=True)
    result = bench(args)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    print()
    print(HEADER)
    print(row(result))
    print()
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(result.cpu_s.items()))
    print(f"{result.completed_in_window:,} paid in the {result.seconds:g} s window "
          f"({result.completed_total:,} in all); peak in flight {result.peak_in_flight}; "
          f"orders prepared in {result.prepare_s:.1f} s")  # fmt: skip
    print(f"CPU seconds in the window: {cpu}")
    if result.completed_in_window:
        per = ", ".join(f"{k} {1000 * v / result.completed_in_window:.2f}"
                        for k, v in sorted(result.cpu_s.items()))  # fmt: skip
        print(f"CPU ms per payment paid in the window: {per}")
    gateways = sorted(k for k in result.cpu_s if k.startswith("g"))
    cores = ", ".join(f"{g} {result.cpu_s[g] / result.seconds:.2f} core" for g in gateways)
    print(f"charges per payment: {result.sandbox_charges / max(1, result.completed_total):.3f} "
          f"(sandbox charges / 200 answers); gateway CPU in the window: {cores}")  # fmt: skip
    print(f"sandbox charges {result.sandbox_charges:,} (at most {result.max_charges_per_order} "
          f"per order); ledger sold {result.ledger_sold:,}; {result.ledger}")  # fmt: skip
    print(f"load average (1, 5, 15 min): before {result.load_before}, "
          f"after {result.load_after}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
