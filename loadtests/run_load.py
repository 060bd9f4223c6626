"""``make load``: the shopper journey under locust against a real local cluster.

Run from the repository root: ``python -m loadtests.run_load [--users 400 --seconds 60]``.

It starts 3 nodes, 1 gateway and the payments sandbox (``flashsale payments-sandbox``,
both providers pointed at it) from a fresh cluster.toml in ``var/load/cluster/``
(tests/support/cluster.py, default settings, fsync durability), creates one sale product
(``--stock`` units, per-user limit 1) whose sale opens ``--open-after`` seconds after
locust starts, then runs loadtests/locustfile.py headless for ``--seconds`` with
``--users`` users spawned at ``--spawn-rate``. Locust writes ``var/load/locust_*.csv``
and ``var/load/locust.html``.

Afterwards it prints a summary (also written to ``var/load/summary.md``): requests/s and
p50/p95/p99 per endpoint, failures, the scenario outcomes (purchased, sold-out,
limit-reached, retried 503...), and the sale's exactness as every node reports it:
sold + reserved + available == total stock on each node, sold never above stock, the
same ledger digest on all three, and the sandbox's charges (less refunds) equal to the
units sold. Every process started is stopped (SIGTERM, then SIGKILL by pid).

Locust, the cluster and the gateway share the machine's cores: the figures are floors.
Exit status 0 when the sale was exact and no request failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.harness.cluster import add_payments
from tests.support.cluster import LocalCluster

PRODUCT = "sale"
PRICE_MINOR = 2500
REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 20.0  # after locust stops: payments in flight land in the ledger
LOCUST_GRACE_S = 60.0  # beyond --seconds before locust is killed
LOAD_SAMPLE_S = 5.0  # how often the load average is sampled during the run
OUTCOME = "OUTCOME"  # the locustfile's pseudo-request type for scenario outcomes


@dataclass(frozen=True)
class EndpointRow:
    name: str
    requests: int
    failures: int
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Report:
    machine: str
    users: int
    spawn_rate: float
    seconds: float
    load_before: str = ""
    load_after: str = ""
    load_max_1min: float = 0.0
    endpoints: list[EndpointRow] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    digests: dict[str, tuple[int, str]] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process, during locust


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cluster_cpu(cluster: LocalCluster) -> dict[str, float]:
    return {proc_id: _cpu_s(proc.pid) for proc_id, proc in cluster.procs.items()}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}"


# -- the cluster ------------------------------------------------------------------------


def open_sale(cluster: LocalCluster, stock: int, open_after_s: float) -> tuple[str, str, int]:
    """Start the payments sandbox and the cluster, wait for the gateway, create the sale
    opening ``open_after_s`` from now: (gateway URL, sandbox URL, opening in ms)."""
    sandbox = add_payments(cluster, webhooks=True)
    _start_sandbox(cluster, sandbox)
    cluster.start(timeout_s=START_TIMEOUT_S)
    host = cluster.config.gateways[0].listen.url
    _wait_200(cluster, cluster.config.gateways[0].id, host + "/readyz")
    opens_at_ms = int((time.time() + open_after_s) * 1000)
    _create_sale(cluster, stock, opens_at_ms)
    return host, sandbox, opens_at_ms


def _start_sandbox(cluster: LocalCluster, base: str) -> None:
    with open(cluster.log_path("payments-sandbox"), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "payments-sandbox", "--config",
             str(cluster.config_path)],
            stdout=out, stderr=subprocess.STDOUT, cwd=cluster.dir, env=_child_env(),
        )  # fmt: skip
    cluster.started_pids.append(proc.pid)
    cluster.procs["payments-sandbox"] = proc
    _wait_200(cluster, "payments-sandbox", base + "/healthz")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))
    return env


def _wait_200(cluster: LocalCluster, proc_id: str, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        proc = cluster.procs[proc_id]
        if proc.poll() is not None:
            raise RuntimeError(f"{proc_id} exited with {proc.returncode}\n{cluster.tails()}")
        with contextlib.suppress(OSError):
            if cluster._http("GET", url, timeout_s=2.0).status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc_id}: {url} not answering 200\n{cluster.tails()}")
        time.sleep(0.1)


def _create_sale(cluster: LocalCluster, stock: int, opens_at_ms: int) -> None:
    answer = cluster.submit([{
        "type": "create_product", "key": "create-sale", "product_id": PRODUCT,
        "name": "Flash sale sneaker", "price_minor": PRICE_MINOR, "total_stock": stock,
        "opens_at_ms": opens_at_ms, "per_user_limit": 1,
    }])  # fmt: skip
    if not answer["results"][0]["ok"]:
        raise RuntimeError(f"create_product refused: {answer}")


# -- locust -----------------------------------------------------------------------------


def _run_locust(
    args: argparse.Namespace,
    host: str,
    secret: str,
    report: Report,
    *,
    locustfile: Path = LOCUSTFILE,
    env_extra: dict[str, str] | None = None,
    user_classes: Sequence[str] = (),
) -> int:
    """Run ``locustfile`` headless (only ``user_classes`` when given); its exit status."""
    out: Path = args.out
    argv = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "--host", host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", f"{args.seconds:g}s", "--stop-timeout", "5",
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"), "--only-summary",
        *user_classes,
    ]  # fmt: skip
    env = _child_env()
    env.update(LOAD_PRODUCT=PRODUCT, LOAD_SECRET="" if args.guest else secret)
    env.update(env_extra or {})
    with open(out / "locust.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + args.seconds + LOCUST_GRACE_S
        while True:
            try:
                return proc.wait(LOAD_SAMPLE_S)
            except subprocess.TimeoutExpired:
                report.load_max_1min = max(report.load_max_1min, float(_loadavg().split()[0]))
                if time.monotonic() > deadline:
                    raise TimeoutError("locust did not stop in time") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _ms(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def _read_stats(out: Path, report: Report) -> None:
    with open(out / "locust_stats.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                continue
            count = int(row["Request Count"])
            if row["Type"] == OUTCOME:
                report.outcomes[row["Name"]] = count
                continue
            report.endpoints.append(EndpointRow(
                name=row["Name"], requests=count, failures=int(row["Failure Count"]),
                per_s=count / report.seconds, p50_ms=_ms(row["50%"]), p95_ms=_ms(row["95%"]),
                p99_ms=_ms(row["99%"]), max_ms=_ms(row["Max Response Time"]),
            ))  # fmt: skip
    failures = out / "locust_failures.csv"
    if failures.exists():
        with open(failures, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                report.failures.append(
                    f"{row['Method']} {row['Name']}: {row['Error']} x{row['Occurrences']}"
                )


# -- exactness --------------------------------------------------------------------------


def _settle_and_check(cluster: LocalCluster, sandbox: str, stock: int, report: Report) -> None:
    """Wait for in-flight payments to land, then check the sale on every node."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        stats = cluster._http("GET", sandbox + "/_sandbox/stats").body
        leader = cluster.wait_for_leader()
        sold = cluster.get(leader, f"/v1/products/{PRODUCT}")["product"]["sold"]
        if stats["charges"] - stats["refunds"] == sold or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    stats.pop("charges_by_order", None)
    stats.pop("by_api", None)
    report.sandbox = stats
    report.digests = {k: v for k, v in sorted(cluster.digests().items())}
    with contextlib.suppress(TimeoutError):
        cluster.wait_converged(timeout_s=SETTLE_TIMEOUT_S)
        report.digests = {k: v for k, v in sorted(cluster.digests().items())}
    for node_id in cluster.node_ids:
        product = cluster.get(node_id, f"/v1/products/{PRODUCT}")["product"]
        report.products[node_id] = product
        parts = product["sold"] + product["reserved"] + product["available"]
        if parts != stock or product["sold"] > stock:
            report.problems.append(f"{node_id}: sold+reserved+available = {parts} != {stock}")
    if len(set(report.digests.values())) != 1:
        report.problems.append(f"nodes disagree: {report.digests}")
    sold = {p["sold"] for p in report.products.values()}
    if len(sold) == 1 and stats["charges"] - stats["refunds"] != sold.pop():
        report.problems.append(
            f"charges {stats['charges']} - refunds {stats['refunds']} != units sold"
        )


# -- output -----------------------------------------------------------------------------


def summary(report: Report, stock: int) -> str:
    """The run as Markdown."""
    total = sum(e.requests for e in report.endpoints)
    failed = sum(e.failures for e in report.endpoints)
    lines = [
        f"machine: {report.machine}; locust, 3 nodes, 1 gateway and the sandbox share it",
        f"load: {report.users} users (spawn rate {report.spawn_rate:g}/s) for "
        f"{report.seconds:g} s; load average before {report.load_before}, highest 1-min "
        f"during {report.load_max_1min:.2f}, after {report.load_after}",
        "",
        "| endpoint | requests | requests/s | failures | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in sorted(report.endpoints, key=lambda e: -e.requests):
        lines.append(
            f"| {e.name} | {e.requests:,} | {e.per_s:,.1f} | {e.failures} | {e.p50_ms:g} | "
            f"{e.p95_ms:g} | {e.p99_ms:g} | {e.max_ms:,.0f} |"
        )
    lines.append(f"| **all** | {total:,} | {total / report.seconds:,.1f} | {failed} | | | | |")
    lines += ["", "| scenario outcome | count |", "|---|---:|"]
    lines += [f"| {name} | {n:,} |" for name, n in sorted(report.outcomes.items())]
    lines.append("")
    for node_id, p in report.products.items():
        lines.append(
            f"{node_id}: total {p['total_stock']}, sold {p['sold']}, reserved "
            f"{p['reserved']}, available {p['available']}"
        )
    digests = {f"{i}:{d[:12]}" for i, d in report.digests.values()}
    lines.append(f"ledger (index:digest) on the nodes: {', '.join(sorted(digests))}")
    s = report.sandbox
    lines.append(
        f"sandbox: {s.get('charges')} charges, {s.get('refunds')} refunds, "
        f"{s.get('declines')} declines, charged {s.get('charged_minor')} minor units "
        f"(price {PRICE_MINOR})"
    )
    sold = max((p["sold"] for p in report.products.values()), default=0)
    lines.append(
        f"oversold: {max(0, sold - stock)}; units sold {sold} of {stock}"
        + (" (sold out)" if sold == stock else "")
    )
    cores = os.cpu_count() or 1
    used = ", ".join(f"{k} {v:.1f}" for k, v in report.cpu_s.items())
    lines.append(
        f"CPU seconds used during the locust run: {used} "
        f"(the machine had {cores * report.seconds:g} core-seconds)"
    )
    if report.failures:
        lines += ["", "failures:", *(f"- {f}" for f in report.failures)]
    if report.problems:
        lines += ["", "PROBLEMS:", *(f"- {p}" for p in report.problems)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Report:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("locust*"):
        old.unlink()
    directory = out / "cluster"
    shutil.rmtree(directory, ignore_errors=True)
    report = Report(_machine(), args.users, args.spawn_rate, args.seconds)
    cluster = LocalCluster(directory, 3, gateways=1)
    try:
        host, sandbox, _ = open_sale(cluster, args.stock, args.open_after)
        report.load_before = _loadavg()
        print(f"sale opens in {args.open_after:g} s; locust: {args.users} users, "
              f"{args.seconds:g} s against {host}", flush=True)  # fmt: skip
        cpu_before, locust_before = _cluster_cpu(cluster), _children_cpu_s()
        code = _run_locust(args, host, cluster.secret, report)
        # Locust is the only child reaped meanwhile: the children's total grew by its CPU.
        report.cpu_s["locust"] = _children_cpu_s() - locust_before
        cpu_after = _cluster_cpu(cluster)
        for proc_id, used in cpu_after.items():
            report.cpu_s[proc_id] = used - cpu_before.get(proc_id, 0.0)
        report.load_after = _loadavg()
        if code not in (0, 1):  # 1: locust saw failed requests, reported below
            report.problems.append(f"locust exited with {code} (see {out / 'locust.log'})")
        _read_stats(out, report)
        _settle_and_check(cluster, sandbox, args.stock, report)
        cluster.stop()
    finally:
        cluster.kill_all()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run_load", description=(
        "The shopper journey under locust against a local 3-node cluster, 1 gateway and "
        "the payments sandbox; prints a summary and writes CSV/HTML reports."))  # fmt: skip
    parser.add_argument("--users", type=int, default=400, help="concurrent locust users")
    parser.add_argument("--spawn-rate", type=float, default=50.0, help="users started per s")
    parser.add_argument("--seconds", type=float, default=60.0, help="locust run time")
    parser.add_argument("--stock", type=int, default=1000, help="units on sale")
    parser.add_argument("--open-after", type=float, default=15.0,
                        help="seconds from locust's start to the sale's opening")  # fmt: skip
    parser.add_argument("--guest", action="store_true",
                        help="shoppers get tokens from POST /session/guest")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "var" / "load", help="reports")
    args = parser.parse_args(argv)
    report = run(args)
    text = summary(report, args.stock)
    (args.out / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    failed = any(e.failures for e in report.endpoints)
    return 1 if report.problems or failed else 0


if __name__ == "__main__":
    sys.exit(main())
