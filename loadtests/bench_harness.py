"""``make bench``: every load at rising concurrency against a real cluster, next to the
ceilings it is compared with, measured in the same run on the same machine.

Run from the repository root: ``python -m loadtests.bench_harness [--quick] [--docs
docs/BENCHMARKS.md] [--json PATH]``.

It starts 3 nodes (default settings, fsync durability), the payments sandbox (no added
latency unless ``--provider-latency-ms``) and up to 4 gateways from one cluster.toml
(``[bots] enabled = false``: the load generator is trusted), then, each load at each
``--levels`` concurrency (a warm-up of ``--warmup`` s, then ``--seconds`` s measured):

- inventory reads ``GET /inventory/{id}`` (wrk, static request), gateway then a bare
  aiohttp + uvloop handler answering the very same bytes (loadtests/harness/bare.py),
  each alone on one core, wrk and the rest on the other(s) (``--pin ratios``, the
  default; ``--pin none`` shares every core, as every other load does);
- reserve attempts after sell-out ``POST /reserve-inventory`` of a sold-out product
  (wrk, a shopper token and a fresh Idempotency-Key per request), gateway then bare
  (answering the gateway's own 409 bytes after reading the body);
- reserve attempts before sell-out: the same against a product with 10^8 units;
- checkout + payment: ``POST /checkout`` then ``POST /payment`` per prepared cart
  (aiohttp in this process: the payment needs the checkout's order id);
- scaling: reads and reserves with 1, 2 and 4 gateway processes (``--gateways``), one
  wrk thread per gateway;
- ceilings: the raw pysyncobj commit rate (loadtests/harness/raft_ceiling.py: 3 bare
  SyncObj processes, one command per entry) and one Redis with a Lua decrement
  (loadtests/harness/redis_ceiling.py, redis-benchmark);
- at the end, on every node: sold + reserved + available == stock for every product,
  and one ledger digest.

Prints the table and the ratios; ``--docs`` also writes them into that file between
marker comments (loadtests/harness/report.py). Every process is stopped by pid at the
end, on errors, Ctrl-C and SIGTERM too. Exit status 1 if a unit was oversold or an
answer was not the expected one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import uvloop

from gateway.identity import issue_token
from loadtests.harness import machine, wrk
from loadtests.harness.bare import Answer, save_answers
from loadtests.harness.checkout_payment import prepare_carts, run_pairs
from loadtests.harness.cluster import check_exact, create_product, open_cluster
from loadtests.harness.processes import spawn, start_gateway, stop, wait_ok
from loadtests.harness.raft_ceiling import run_raft_ceiling
from loadtests.harness.redis_ceiling import run_redis_ceiling
from loadtests.harness.report import Report, Row, markdown, row_line, write_into
from tests.support.cluster import LocalCluster, free_ports

STOCK_PRODUCT = "bench-stock"  # never sells out during the run
SOLD_PRODUCT = "bench-sold"  # one unit, sold before the sold-out steps
PAY_PRODUCT = "bench-pay"  # checkout + payment
BIG_STOCK = 100_000_000
PRICE_MINOR = 2500
HOLDS_PER_USER = 90  # below the ledger's 100 active holds per cart
MAX_RATE_GUESS = 20_000  # requests/s a write step could reach: users are minted for it
TOKEN_TTL_S = 3600
MAX_GATEWAYS = 4
# Load shed by the gateway (503 overloaded + Retry-After) or refused by a rate limit
# (429): a correct answer under overload, counted apart, never as throughput.
SHED_STATUSES = frozenset({429, 503})
P99_TARGET_MS = 100.0  # the issue's latency target
UNBATCHED_MAX_CONNS = 32  # one commit at a time: more would only queue (and be shed)
CACHE_WAIT_S = 10.0  # the gateway's edge cache learns the sell-out within this
PAIRS_RATE_GUESS = 400.0  # checkout+payment pairs/s before the first step measures it


def _letters(n: int) -> str:
    """``n`` in base 26 over a-z: user ids without digits, so that no id can look like a
    card number to the gateway's card scan."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = chr(ord("a") + r) + out
        if n == 0:
            return out


class Bench:
    """One run: the cluster, the scripts' folder, the rows measured so far."""

    def __init__(self, cluster: LocalCluster, tmp: Path, args: argparse.Namespace,
                 report: Report) -> None:  # fmt: skip
        self.cluster = cluster
        self.tmp = tmp
        self.args = args
        self.report = report
        self.runs = 0  # a fresh user prefix and script file per wrk run
        # Reads and sold-out refusals against the bare handler: each server alone on a
        # core (``--pin ratios``, on a machine with 2 cores or more).
        self.pinned = args.pin == "ratios" and len(os.sched_getaffinity(0)) >= 2

    # -- helpers ------------------------------------------------------------------------

    def _hosts(self, ids: Sequence[str]) -> list[tuple[str, int]]:
        return [(g.listen.host, g.listen.port) for g in
                (self.cluster.config.gateway(i) for i in ids)]  # fmt: skip

    def _pids(self, proc_ids: Sequence[str]) -> list[int]:
        return [self.cluster.procs[p].pid for p in proc_ids]

    def _node_pids(self, servers: Sequence[str]) -> list[int]:
        """The nodes' pids when the servers are gateways (a bare server has no cluster)."""
        if not any(s.startswith("g") for s in servers):
            return []
        return self._pids([n for n in self.cluster.node_ids if self.cluster.is_running(n)])

    def _batches(self, servers: Sequence[str]) -> tuple[float, float, float]:
        """Commands and batches the gateways among ``servers`` have sent so far (their
        batch-size histogram's sum and count), and the Raft entries one node applied
        (every node applies every entry; the leader merges batches that arrive while
        entries are in flight, node/proposals.py)."""
        commands = batches = 0.0
        for gid in servers:
            if not gid.startswith("g"):
                continue
            url = self.cluster.config.gateway(gid).listen.url + "/metrics"
            _status, body, _headers = _http("GET", url)
            text = body.decode()
            commands += _metric(text, "flashsale_gateway_batch_size_sum")
            batches += _metric(text, "flashsale_gateway_batch_size_count")
        entries = 0.0
        if batches:
            node = next(n for n in self.cluster.node_ids if self.cluster.is_running(n))
            entries = _metric(self.cluster.metrics(node), "flashsale_node_batch_commands_count")
        return commands, batches, entries

    def _script(self, text: str) -> Path:
        self.runs += 1
        path = self.tmp / f"run{self.runs}.lua"
        path.write_text(text)
        return path

    def _write_script(self, hosts: list[tuple[str, int]], threads: int, product: str,
                      seconds: float) -> Path:  # fmt: skip
        prefix = "b" + _letters(self.runs) + "x"
        count = max(threads, math.ceil(MAX_RATE_GUESS * seconds / HOLDS_PER_USER))
        users = [prefix + _letters(i) for i in range(count)]
        tokens = [issue_token(self.cluster.secret, u, TOKEN_TTL_S) for u in users]
        return self._script(wrk.reserve_script(
            hosts, threads, path="/reserve-inventory", product=product, users=users,
            tokens=tokens, per_user=HOLDS_PER_USER, prefix=prefix,
        ))  # fmt: skip

    def _reads(self, hosts: list[tuple[str, int]], threads: int) -> Callable[[float], Path]:
        """Script maker for GETs spread over ``hosts``."""
        return lambda _seconds: self._script(wrk.read_script(hosts, threads))

    def _writes(
        self, hosts: list[tuple[str, int]], threads: int, product: str
    ) -> Callable[[float], Path]:
        """Script maker for reserves of ``product`` with users minted for the duration."""
        return lambda seconds: self._write_script(hosts, threads, product, seconds)

    def _wrk_step(
        self, load: str, server: str, url: str, servers: Sequence[str],
        make_script: Callable[[float], Path], threads: int, conns: int, expect: int,
        *, own_core: bool = False,
    ) -> Row:  # fmt: skip
        """A warm-up run, then the measured run; the servers' CPU in the window.
        ``own_core``: the servers alone on one core, wrk and the rest on the others."""
        a = self.args
        pids = self._pids(servers)
        rest = [p.pid for name, p in self.cluster.procs.items() if name not in servers]
        with machine.own_core(pids, rest) if own_core else contextlib.nullcontext(False):
            if a.warmup > 0:
                wrk.run(url, make_script(a.warmup), threads=threads, connections=conns,
                        seconds=a.warmup)  # fmt: skip
            script = make_script(a.seconds)
            nodes = self._node_pids(servers)
            before = [machine.cpu_seconds(p) for p in pids]
            nodes_before = [machine.cpu_seconds(p) for p in nodes]
            batches_before = self._batches(servers)
            res = wrk.run(url, script, threads=threads, connections=conns, seconds=a.seconds)
            server_cpu = sum(machine.cpu_seconds(p) for p in pids) - sum(before)
            nodes_cpu = sum(machine.cpu_seconds(p) for p in nodes) - sum(nodes_before)
        batches_after = self._batches(servers)
        statuses = res.statuses or ({200: res.requests - res.non_2xx} if res.requests else {})
        good = statuses.get(expect, 0)
        shed = sum(n for code, n in statuses.items() if code in SHED_STATUSES)
        answers = ", ".join(
            f"{code} x {n:,}" + (" (shed)" if code in SHED_STATUSES else "")
            for code, n in sorted(statuses.items())
        )
        if res.socket_errors:
            answers += f", socket errors {res.socket_errors:,}"
        if not res.statuses and res.non_2xx:
            answers += f", non-2xx {res.non_2xx:,}"
        batches = batches_after[1] - batches_before[1]
        entries = batches_after[2] - batches_before[2]
        if expect == 200 and batches > 0:  # writes that reached the cluster
            commands = batches_after[0] - batches_before[0]
            answers += f"; {commands / batches:.1f} commands per gateway batch"
            if entries > 0:
                answers += f", {commands / entries:.1f} per Raft entry"
        others = set(statuses) - {expect} - SHED_STATUSES
        expected = (res.socket_errors == 0 and not others and good > 0
                    and not (res.non_2xx and not res.statuses))  # fmt: skip
        row = Row(load, server, conns, f"wrk -t{threads}", res.seconds, good,
                  good / res.seconds if res.seconds else 0.0, res.p50_ms, res.p95_ms,
                  res.p99_ms, answers or "none", expected, server_cpu, res.client_cpu_s,
                  shed, nodes_cpu)  # fmt: skip
        self._add(row)
        return row

    def _add(self, row: Row) -> None:
        self.report.rows.append(row)
        print(row_line(row), flush=True)

    # -- set-up ---------------------------------------------------------------------------

    def prepare(self) -> tuple[str, str]:
        """Products, the sell-out of SOLD_PRODUCT, the bare server; (gateway, bare) URLs."""
        c = self.cluster
        create_product(c, STOCK_PRODUCT, BIG_STOCK, PRICE_MINOR)
        create_product(c, SOLD_PRODUCT, 1, PRICE_MINOR)
        create_product(c, PAY_PRODUCT, 1_000_000, PRICE_MINOR)
        base = start_gateway(c, "g1", {})
        buyer = "soldbuyer"
        token = issue_token(c.secret, buyer, TOKEN_TTL_S)
        hold = _http("POST", base + "/reserve-inventory", token, "sellout",
                     {"user_id": buyer, "product_id": SOLD_PRODUCT, "quantity": 1})  # fmt: skip
        if hold[0] != 200:
            raise RuntimeError(f"could not sell out {SOLD_PRODUCT}: {hold}")
        deadline = time.monotonic() + CACHE_WAIT_S
        while True:  # the edge cache must know it is sold out before the steps
            status, body, _ = _http("GET", f"{base}/inventory/{SOLD_PRODUCT}")
            if status == 200 and json.loads(body)["available_quantity"] == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway cache never saw {SOLD_PRODUCT} sold out")
            time.sleep(0.05)
        # The bytes the bare server replays: the gateway's own answers.
        status, body, headers = _http("GET", f"{base}/inventory/{STOCK_PRODUCT}")
        read = Answer(status, "application/json", body, _keep(headers))
        refusal_user = "refused"
        status, body, headers = _http(
            "POST", base + "/reserve-inventory", issue_token(c.secret, refusal_user, 60), "r1",
            {"user_id": refusal_user, "product_id": SOLD_PRODUCT, "quantity": 1})  # fmt: skip
        if status != 409:
            raise RuntimeError(f"expected a sold-out 409 from the edge, got {status} {body!r}")
        refusal = Answer(status, "application/problem+json", body, _keep(headers))
        answers = self.tmp / "answers.json"
        save_answers(answers, read, refusal)
        (port,) = free_ports(1)
        listen = f"127.0.0.1:{port}"
        spawn(c, "bare", ["-m", "loadtests.harness.bare", listen, str(answers)], {})
        bare = f"http://{listen}"
        wait_ok(c, "bare", f"{bare}/inventory/{STOCK_PRODUCT}")
        return base, bare

    # -- the loads ------------------------------------------------------------------------

    def reads_and_refusals(self, base: str, bare: str) -> None:
        g1 = self._hosts(["g1"])
        bare_host = [("127.0.0.1", int(bare.rsplit(":", 1)[1]))]
        for conns in self.args.levels if "reads" in self.args.loads else []:
            for server, url, hosts, procs in (
                ("gateway x1", base, g1, ["g1"]),
                ("bare aiohttp", bare, bare_host, ["bare"]),
            ):
                self._wrk_step("inventory reads", server, f"{url}/inventory/{STOCK_PRODUCT}",
                               procs, self._reads(hosts, 1),
                               1, conns, 200, own_core=self.pinned)  # fmt: skip
        for conns in self.args.levels if "refusals" in self.args.loads else []:
            for server, url, hosts, procs in (
                ("gateway x1", base, g1, ["g1"]),
                ("bare aiohttp", bare, bare_host, ["bare"]),
            ):
                self._wrk_step("reserve after sell-out", server, f"{url}/reserve-inventory",
                               procs, self._writes(hosts, 1, SOLD_PRODUCT),
                               1, conns, 409, own_core=self.pinned)  # fmt: skip

    def reserves(self, base: str) -> None:
        g1 = self._hosts(["g1"])
        for conns in self.args.levels:
            self._wrk_step("reserve before sell-out", "gateway x1", f"{base}/reserve-inventory",
                           ["g1"], self._writes(g1, 1, STOCK_PRODUCT),
                           1, conns, 200)  # fmt: skip

    def unbatched(self) -> None:
        """The same reserves through a gateway with ``max_batch = 1``: every command its
        own Raft entry, on the very nodes (fsync durability) that the batched rows use."""
        conns = min(UNBATCHED_MAX_CONNS, max(self.args.levels))
        gid = f"g{MAX_GATEWAYS}"
        url = start_gateway(self.cluster, gid, {"FLASHSALE_GATEWAY__MAX_BATCH": "1"})
        hosts = self._hosts([gid])
        try:
            self._wrk_step("reserve before sell-out, batching off", "gateway x1, max_batch 1",
                           f"{url}/reserve-inventory", [gid],
                           self._writes(hosts, 1, STOCK_PRODUCT),
                           1, conns, 200)  # fmt: skip
        finally:
            stop(self.cluster, gid)

    def checkout_payment(self, base: str) -> None:
        a = self.args
        rate = PAIRS_RATE_GUESS
        for n, conns in enumerate(a.levels):
            want = int(rate * 1.5 * (a.warmup + a.seconds)) + 2 * conns
            users = [f"p{_letters(n)}x{_letters(i)}" for i in range(want)]
            carts, errors = uvloop.run(prepare_carts([base], self.cluster.secret, PAY_PRODUCT,
                                                     users, min(128, want)))  # fmt: skip
            if errors:
                self.report.notes.append(f"checkout+payment set-up at {conns}: {errors}")
            pids = self._pids(["g1", "payments-sandbox"])
            nodes = self._node_pids(["g1"])
            before = [machine.cpu_seconds(p) for p in pids]
            nodes_before = [machine.cpu_seconds(p) for p in nodes]
            client_before = time.process_time()
            step = uvloop.run(run_pairs(carts, conns, a.warmup, a.seconds))
            client_cpu = time.process_time() - client_before
            server_cpu = sum(machine.cpu_seconds(p) for p in pids) - sum(before)
            nodes_cpu = sum(machine.cpu_seconds(p) for p in nodes) - sum(nodes_before)
            rate = max(rate, step.per_s)
            answers = f"200+200 x {step.pairs:,}"
            if step.retried_503:
                answers += f", 503 retried after Retry-After x {step.retried_503:,} (shed)"
            if step.errors:
                answers += ", " + ", ".join(f"{k} x {v:,}" for k, v in step.errors.items())
            if step.carts_ran_out:
                answers += " (carts ran out: rate is a floor)"
            expected = _pairs_expected(step.errors, step.pairs)
            self._add(Row("checkout+payment", "gateway x1 + sandbox", conns, "aiohttp",
                          a.seconds, step.pairs, step.per_s, step.p50_ms, step.p95_ms,
                          step.p99_ms, answers, expected,
                          server_cpu, client_cpu, step.retried_503, nodes_cpu))  # fmt: skip
            # The same pairs' two writes timed apart (CPU is the pair row's): the issue's
            # p99 target is about checkout; the payment's time is mostly the provider's.
            for part, server, (p50, p95, p99) in (
                ("checkout", "gateway x1", step.checkout_ms),
                ("payment", "gateway x1 + sandbox", step.payment_ms),
            ):
                self._add(Row(f"checkout+payment: {part} alone", server, conns, "aiohttp",
                              a.seconds, step.pairs, step.per_s, p50, p95, p99,
                              f"200 x {step.pairs:,} (the pairs above)", expected))  # fmt: skip

    def scaling(self) -> None:
        """Reads and reserves with exactly N gateways running, for each N, ``--rounds``
        times in turn (so that drift in the machine's load hits every N alike)."""
        a = self.args
        running = ["g1"]
        url = self.cluster.config.gateway("g1").listen.url
        for _round in range(a.rounds):
            for n in a.gateways:
                ids = [f"g{i + 1}" for i in range(n)]
                for gid in [g for g in running if g not in ids]:
                    stop(self.cluster, gid)
                    running.remove(gid)
                for gid in [g for g in ids if g not in running]:
                    start_gateway(self.cluster, gid, {})
                    running.append(gid)
                hosts = self._hosts(ids)
                self._wrk_step("scaling: inventory reads", f"gateways x{n}",
                               f"{url}/inventory/{STOCK_PRODUCT}", ids, self._reads(hosts, n),
                               n, a.scaling_connections, 200)  # fmt: skip
                self._wrk_step("scaling: reserve before sell-out", f"gateways x{n}",
                               f"{url}/reserve-inventory", ids,
                               self._writes(hosts, n, STOCK_PRODUCT),
                               n, a.scaling_connections, 200)  # fmt: skip
        for gid in running:
            stop(self.cluster, gid)

    def ceilings(self) -> None:
        a = self.args
        levels = list(a.levels)
        steps = run_raft_ceiling(free_ports(3), levels, a.seconds, self.tmp,
                                 self.cluster.log_path("raft-ceiling"))  # fmt: skip
        for s in steps:
            self._add(Row("raw commits, 1 command per entry", "pysyncobj, 3 processes",
                          s.concurrency, "in-process callers", s.seconds, s.commits, s.per_s,
                          s.p50_ms, s.p95_ms, s.p99_ms, f"committed x {s.commits:,}",
                          s.commits > 0))  # fmt: skip
        requests = 20_000 if a.quick else 200_000
        for r in run_redis_ceiling(levels, requests):
            self._add(Row("Lua decrement (EVALSHA)", "one Redis 7", r.concurrency,
                          "redis-benchmark", r.requests / r.per_s if r.per_s else 0.0,
                          r.requests, r.per_s, r.p50_ms, r.p95_ms, r.p99_ms,
                          f"decremented x {r.sold:,}", r.sold == r.requests, 0.0,
                          r.client_cpu_s))  # fmt: skip


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _pairs_expected(errors: dict[str, int], pairs: int) -> bool:
    """Only shedding (503 after every retry) may stop a pair; anything else is wrong."""
    return pairs > 0 and all(" 503 " in label for label in errors)


def _keep(headers: dict[str, str]) -> dict[str, str]:
    """The headers a bare server repeats: the gateway's own, not the transport's."""
    drop = {"content-type", "content-length", "date", "server", "connection"}
    return {k: v for k, v in headers.items() if k.lower() not in drop}


def _http(method: str, url: str, token: str | None = None, key: str | None = None,
          body: object = None) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if key:
        headers["Idempotency-Key"] = key
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10.0) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read(), dict(err.headers)


# -- ratios -------------------------------------------------------------------------------


def _best(rows: Sequence[Row], load: str, server_prefix: str = "") -> Row | None:
    found = [r for r in rows if r.load == load and r.server.startswith(server_prefix)]
    return max(found, key=lambda r: r.per_s, default=None)


def _pair_ratio(rows: Sequence[Row], load: str) -> tuple[float, str]:
    """Gateway against bare at the best level of each, and at each level."""
    per_level = []
    for r in rows:
        if r.load == load and r.server == "gateway x1":
            bare = next((b for b in rows if b.load == load and b.server == "bare aiohttp"
                         and b.connections == r.connections), None)  # fmt: skip
            if bare is not None and bare.per_s:
                per_level.append(f"{r.connections}: {r.per_s / bare.per_s:.2f}")
    gw, bare_best = _best(rows, load, "gateway"), _best(rows, load, "bare")
    best = gw.per_s / bare_best.per_s if gw and bare_best and bare_best.per_s else 0.0
    return best, "; ".join(per_level)


def _per_cpu_ratio(rows: Sequence[Row], load: str) -> float:
    """Median over the levels of gateway / bare requests per server CPU-second."""
    found = []
    for r in rows:
        if r.load == load and r.server == "gateway x1" and r.server_cpu_s:
            bare = next((b for b in rows if b.load == load and b.server == "bare aiohttp"
                         and b.connections == r.connections and b.server_cpu_s), None)  # fmt: skip
            if bare is not None and bare.requests:
                found.append((r.requests / r.server_cpu_s) / (bare.requests / bare.server_cpu_s))
    return statistics.median(found) if found else 0.0


def _p99_verdict(rows: Sequence[Row], load: str, server: str) -> tuple[str, str, str]:
    line = [r for r in rows if r.load == load and r.server == server]
    held = [r.connections for r in line if r.p99_ms < P99_TARGET_MS and r.requests]
    worst = max(line, key=lambda r: r.connections, default=None)
    value = (f"up to {max(held)} conns" if held else "none") + (
        f"; p99 {worst.p99_ms:,.0f} ms at {worst.connections}" if worst else ""
    )
    return (f"{load}: concurrency at which p99 < {P99_TARGET_MS:.0f} ms", value,
            f"p99 < {P99_TARGET_MS:.0f} ms at the highest concurrency held")  # fmt: skip


def ratios(report: Report, oversold: int) -> None:
    rows = report.rows
    for load in ("inventory reads", "reserve after sell-out"):
        best, levels = _pair_ratio(rows, load)
        verdict = "met" if best >= 0.70 else f"missed by {0.70 - best:.2f}"
        report.ratios.append((f"{load}: gateway / bare aiohttp requests/s, best of each "
                              f"(per level: {levels})", f"{best:.2f}",
                              f">= 0.70 ({verdict})"))  # fmt: skip
        cpu_ratio = _per_cpu_ratio(rows, load)
        verdict = "met" if cpu_ratio >= 0.70 else f"missed by {0.70 - cpu_ratio:.2f}"
        report.ratios.append((f"{load}: gateway / bare aiohttp requests per server CPU-s, "
                              f"median over the levels", f"{cpu_ratio:.2f}",
                              f">= 0.70 ({verdict})"))  # fmt: skip
    for load, server in (("inventory reads", "gateway x1"),
                         ("reserve before sell-out", "gateway x1"),
                         ("checkout+payment: checkout alone", "gateway x1")):  # fmt: skip
        report.ratios.append(_p99_verdict(rows, load, server))
    reserves = [r for r in rows if r.load.endswith("reserve before sell-out")]
    off = _best(rows, "reserve before sell-out, batching off")
    best_reserve = max(reserves, key=lambda r: r.per_s, default=None)
    raft = _best(rows, "raw commits, 1 command per entry")
    redis_best = _best(rows, "Lua decrement (EVALSHA)")
    if best_reserve and raft and raft.per_s:
        x = best_reserve.per_s / raft.per_s
        verdict = "met" if x >= 10 else f"missed: {x:.3f}x, a factor {10 / x:,.0f} short"
        report.ratios.append((
            f"reserve commits with micro-batching ({best_reserve.per_s:,.0f}/s, "
            f"{best_reserve.server}, {best_reserve.connections} conns) / raw unbatched "
            f"pysyncobj ({raft.per_s:,.0f}/s at {raft.connections})", f"{x:.3f}x",
            f">= 10x ({verdict})"))  # fmt: skip
    if best_reserve and off and off.per_s:
        same = next((r for r in reserves if r.server == "gateway x1"
                     and r.connections == off.connections), None)  # fmt: skip
        at_same = (
            f"; {same.per_s / off.per_s:.1f}x at the same {off.connections} conns" if same else ""
        )
        report.ratios.append(
            (
                f"reserve commits with micro-batching / the same gateway and nodes with batching "
                f"off ({off.per_s:,.0f}/s at {off.connections} conns{at_same})",
                f"{best_reserve.per_s / off.per_s:.1f}x",
                "(the issue's 10x, on our own Raft)",
            )
        )
    if best_reserve and redis_best and redis_best.per_s:
        report.ratios.append((
            f"reserve commits / one Redis Lua decrement ({redis_best.per_s:,.0f}/s at "
            f"{redis_best.connections})", f"{best_reserve.per_s / redis_best.per_s:.3f}x",
            "(no target: what most shops use instead)"))  # fmt: skip
    scaled = [r for r in rows if r.load.startswith("scaling:")]
    for load in sorted({r.load for r in scaled}):
        by_n: dict[str, list[Row]] = {}
        for r in scaled:
            if r.load == load:
                by_n.setdefault(r.server, []).append(r)
        rate = {k: statistics.median(r.per_s for r in v) for k, v in by_n.items()}
        per_cpu = {k: statistics.median(r.requests / r.server_cpu_s for r in v if r.server_cpu_s)
                   if any(r.server_cpu_s for r in v) else 0.0 for k, v in by_n.items()}  # fmt: skip
        one = rate.get("gateways x1", 0.0)
        if one:
            report.ratios.append((
                f"{load}: median requests/s relative to 1 gateway (median requests/s; per "
                f"server CPU-s)",
                ", ".join(f"{k}: {v / one:.2f} ({v:,.0f}; {per_cpu[k]:,.0f})"
                          for k, v in rate.items()),
                "grows per added core",
            ))  # fmt: skip
    report.ratios.append(("oversold units (all products, every node)", str(oversold), "0"))


# -- the run ------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> Report:
    report = Report(
        started=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine.describe(),
        uptime_before=machine.uptime(),
        mode="quick" if args.quick else "full",
    )
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp_name:
        tmp = Path(tmp_name)
        cluster, _sandbox = open_cluster(tmp / "cluster", MAX_GATEWAYS, args.provider_latency_ms)
        try:
            b = Bench(cluster, tmp, args, report)
            if b.pinned:
                report.pinning = PINNED_RATIOS
            base, bare = b.prepare()
            loads = args.loads
            b.reads_and_refusals(base, bare)
            stop(cluster, "bare")
            if "reserves" in loads:
                b.reserves(base)
            if "unbatched" in loads:
                b.unbatched()
            if "checkout" in loads:
                b.checkout_payment(base)
            if "scaling" in loads:
                b.scaling()
            exact = check_exact(cluster, [STOCK_PRODUCT, SOLD_PRODUCT, PAY_PRODUCT])
            for pid, p in exact.products.items():
                report.exactness.append(
                    f"`{pid}` on every node: stock {p['stock']:,} = sold {p['sold']:,} + "
                    f"reserved {p['reserved']:,} + available {p['available']:,}")  # fmt: skip
            report.exactness.append(f"ledger: {exact.ledger}")
            report.problems = exact.problems
            report.oversold = exact.oversold
            report.exactness += [f"**problem**: {p}" for p in exact.problems]
            report.exactness.append(f"**oversold units: {exact.oversold}**")
            for node_id in cluster.node_ids:  # quiet machine for the ceilings
                cluster.stop_node(node_id)
            stop(cluster, "payments-sandbox")
            if "ceilings" in loads:
                b.ceilings()
            ratios(report, exact.oversold)
        finally:
            cluster.kill_all()
    report.uptime_after = machine.uptime()
    return report


PINNED_RATIOS = (
    "inventory reads and reserves after sell-out (the gateway and the bare handler alike): "
    "the measured server alone on one core, wrk, the nodes and the harness on the other; "
    "every other load: none, client and servers share every core"
)

# What --loads can name, in the order a run measures them.
LOADS = ("reads", "refusals", "reserves", "unbatched", "checkout", "scaling", "ceilings")


def _loads(text: str) -> tuple[str, ...]:
    names = tuple(x for x in re.split(r"[,\s]+", text.strip()) if x)
    unknown = sorted(set(names) - set(LOADS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(LOADS)}, got {text!r}")
    return names


def _levels(text: str) -> list[int]:
    values = [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 8,32,128,512")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_harness", description=(
        "Every load at rising concurrency against a local cluster, with the bare-handler, "
        "raw-Raft and Redis ceilings measured in the same run."))  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="CI mode: one level (32), 1 s per step, 1 gateway")  # fmt: skip
    parser.add_argument("--levels", type=_levels, default=None,
                        help="connections per step (default 8,32,128,512)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=None, help="measured s per step (3)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="unmeasured s per step (1, quick 0)"
    )
    parser.add_argument("--gateways", type=_levels, default=None,
                        help="gateway counts of the scaling run (default 1,2,4)")  # fmt: skip
    parser.add_argument(
        "--scaling-connections",
        type=int,
        default=None,
        help="connections of the scaling run, spread over the gateways (128)",
    )
    parser.add_argument("--rounds", type=int, default=None,
                        help="repetitions of the scaling run, in turn (2, quick 1)")  # fmt: skip
    parser.add_argument("--provider-latency-ms", type=int, default=0,
                        help="the payments sandbox's added latency per call")  # fmt: skip
    parser.add_argument("--loads", type=_loads, default=LOADS,
                        help=f"only these loads, comma-separated, of {','.join(LOADS)} "
                             "(default all; a partial run is not written into --docs)")  # fmt: skip
    parser.add_argument("--pin", choices=("ratios", "none"), default="ratios",
                        help="ratios (default): for reads and sold-out refusals, the gateway "
                             "and the bare handler each alone on one core, wrk and the rest "
                             "on the others; none: everything shares every core")  # fmt: skip
    parser.add_argument("--docs", type=Path, help="write the results into this Markdown file")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.docs is not None and set(args.loads) != set(LOADS):
        parser.error("--docs takes a whole run: drop --loads or --docs")
    quick = args.quick
    args.levels = args.levels or ([32] if quick else [8, 32, 128, 512])
    args.seconds = args.seconds if args.seconds is not None else (1.0 if quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if quick else 1.0)
    args.gateways = args.gateways or ([1] if quick else [1, 2, 4])
    if max(args.gateways) > MAX_GATEWAYS:
        parser.error(f"at most {MAX_GATEWAYS} gateways")
    args.rounds = args.rounds or (1 if quick else 2)
    if args.scaling_connections is None:
        args.scaling_connections = 32 if quick else 128
    return args


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds through the finally blocks that kill every process by pid.
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not wrk.available():
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    print(f"machine: {machine.describe()}\n{machine.uptime()}", flush=True)
    report = bench(args)
    block = markdown(report)
    print()
    print(block, flush=True)
    if args.docs is not None:
        write_into(args.docs, block)
        print(f"\nwritten into {args.docs}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    unexpected = [r for r in report.rows if not r.expected]
    return 1 if report.oversold or report.problems or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
