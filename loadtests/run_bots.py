"""``make load-bots``: shoppers and bots side by side under locust, bot defences on.

Run from the repository root: ``python -m loadtests.run_bots [--users 150 --seconds 60]``.

It starts, like ``make load`` (loadtests/run_load.py, whose start-up, locust runner,
exactness checks and summary it reuses), 3 nodes, 1 gateway and the payments sandbox from
a fresh cluster.toml in ``var/load/bots/cluster/``, but with ``[bots] enabled = true`` and
every other ``[bots]`` number at its shipped default (rate limits, proof of work,
heuristics and the waiting room all on; no Redis: one gateway). It creates one product of
``--stock`` units (per-user limit 1) whose sale opens ``--open-after`` seconds after locust
starts, and runs loadtests/locust_bots.py: ``--users`` locust users of which ``--bots``
(swarm, scripted, replay, farm) are bots, the rest shoppers.

Afterwards, besides ``make load``'s summary and checks, it reports:

- **who got the units**, from the ledger: every event of the leader's feed (``GET
  /v1/feed`` from index 0) that moves units carries the shopper id, and the id's prefix
  is the class (``shopper-``, ``bot-swarm-``, ...). Per class: units ever held, reserved
  and sold at the end; the per-class sums are checked against the product's own counts;
- **the bots' share**: units reserved or sold by bots over all units reserved or sold;
- **answers per class** from locust's ``ANSWER`` pseudo-requests: 2xx, the sale's own
  answers (409 sold-out, ...), 429, and 403 by problem type;
- the gateway's ``flashsale_gateway_bot_decisions_total`` by decision and reason
  (``/metrics``), and its ``GET /internal/bots`` document (defences on, settings, queue).

Reports in ``--out`` (default var/load/bots/): ``locust_*.csv``, ``locust.html``,
``summary.md``. Exit status 0 when the swarm, scripted and replay bots got no unit, the
account farm no more than its bound (docs/BOTS.md "Account farms"), shoppers got some,
no shopper was turned away by a defence, no request failed and the sale was exact; 1
otherwise. The bots' share is printed either way: its goal is zero.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cluster.config import BotsConfig
from loadtests.run_load import (
    PRODUCT,
    REPO,
    EndpointRow,
    Report,
    _children_cpu_s,
    _cluster_cpu,
    _loadavg,
    _machine,
    _ms,
    _run_locust,
    _settle_and_check,
    open_sale,
    summary,
)
from tests.support.cluster import LocalCluster

LOCUSTFILE = Path(__file__).resolve().parent / "locust_bots.py"
BOT_KINDS = ("bot-swarm", "bot-script", "bot-replay", "bot-farm")
CLASSES = ("shopper", *BOT_KINDS)
LOCUST_CLASSES = ("SwarmBot", "ScriptedBot", "ReplayBot", "FarmBot")  # as BOT_KINDS
BOTS_ON: Mapping[str, object] = {"enabled": True}  # every defence, shipped numbers
HOLD_ROUTE = "POST /add-to-cart"
UNIT_BUCKETS = frozenset({"reserved", "sold"})  # units someone holds or bought
FEED_PAGE = 10_000
# Answer columns of the per-class table, in order; anything else is "other".
SALE_ANSWERS = frozenset({
    "409 sold-out", "409 limit-reached", "409 not-open", "409 sale-closed",
    "410 hold-expired", "402 payment-declined",
})  # fmt: skip
REFUSALS = ("429 rate-limited", "403 admission-required", "403 challenge-required",
            "403 challenge-invalid", "403 challenge-replayed", "403 blocked",
            "403 admission-not-yours", "403 ticket-invalid",
            "410 admission-expired")  # fmt: skip


@dataclass
class Units:
    """One class's units: ever put in a hold, and reserved / sold at the end."""

    held: int = 0
    reserved: int = 0
    sold: int = 0


@dataclass
class BotsRun:
    opens_after_s: float
    counts: dict[str, int] = field(default_factory=dict)  # locust users per bot kind
    units: dict[str, Units] = field(default_factory=dict)
    answers: dict[str, Counter[str]] = field(default_factory=dict)  # every request
    holds: dict[str, Counter[str]] = field(default_factory=dict)  # POST /add-to-cart only
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)
    bots_doc: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def kind_units(self, kind: str) -> int:
        units = self.units.get(kind, Units())
        return units.reserved + units.sold

    def bot_units(self) -> int:
        return sum(self.units.get(k, Units()).reserved + self.units.get(k, Units()).sold
                   for k in BOT_KINDS)  # fmt: skip

    def all_units(self) -> int:
        return sum(u.reserved + u.sold for u in self.units.values())

    def bot_share(self) -> float:
        total = self.all_units()
        return self.bot_units() / total if total else 0.0


# -- pure parts ---------------------------------------------------------------------------


def user_class(user_id: str) -> str:
    """The class of a shopper id: ``shopper``, a bot kind, or ``other``."""
    for kind in CLASSES:
        if user_id.startswith(kind + "-"):
            return kind
    return "other"


def attribute(events: Iterable[Mapping[str, Any]], product: str) -> dict[str, Units]:
    """Units of ``product`` per class, from feed events: every move in or out of the
    reserved and sold buckets counts for the event's shopper."""
    units: dict[str, Units] = {}
    for event in events:
        moves = [
            m
            for m in event.get("moves") or ()
            if m.get("product_id") == product and {m["from_bucket"], m["to_bucket"]} & UNIT_BUCKETS
        ]
        if not moves:
            continue
        u = units.setdefault(user_class(str(event.get("user_id", ""))), Units())
        for m in moves:
            q = int(m["quantity"])
            for bucket, sign in ((m["from_bucket"], -1), (m["to_bucket"], 1)):
                if bucket == "reserved":
                    u.reserved += sign * q
                elif bucket == "sold":
                    u.sold += sign * q
            if event.get("kind") == "hold_placed":
                u.held += q
    return units


def bot_decisions(metrics_text: str) -> dict[tuple[str, str], int]:
    """``flashsale_gateway_bot_decisions_total`` by (decision, reason)."""
    out: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "flashsale_gateway_bot_decisions":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["decision"], sample.labels["reason"])
                out[key] = out.get(key, 0) + int(sample.value)
    return out


def answer_of(name: str) -> tuple[str, str, str]:
    """(class, "METHOD path", "status problem-type") of an ANSWER pseudo-request's name
    (``<class> <METHOD> <path> -> <status> <type>``)."""
    head, _, answer = name.partition(" -> ")
    kind, _, route = head.partition(" ")
    return kind, route, answer.strip()


def column(answer: str) -> str:
    """The per-class table's column of an answer."""
    status = answer.split(" ", 1)[0]
    if status.startswith("2"):
        return "2xx"
    if answer in SALE_ANSWERS:
        return "sale answer"
    return answer if answer in REFUSALS else "other"


# -- the run ------------------------------------------------------------------------------


def _read_stats(out: Path, seconds: float, report: Report, run: BotsRun) -> None:
    with open(out / "locust_stats.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            count = int(row["Request Count"])
            if row["Name"] == "Aggregated":
                continue
            if row["Type"] == "OUTCOME":
                report.outcomes[row["Name"]] = count
            elif row["Type"] == "ANSWER":
                kind, route, answer = answer_of(row["Name"])
                run.answers.setdefault(kind, Counter())[answer] += count
                if route == HOLD_ROUTE:
                    run.holds.setdefault(kind, Counter())[answer] += count
            else:
                report.endpoints.append(EndpointRow(
                    name=row["Name"], requests=count, failures=int(row["Failure Count"]),
                    per_s=count / seconds, p50_ms=_ms(row["50%"]), p95_ms=_ms(row["95%"]),
                    p99_ms=_ms(row["99%"]), max_ms=_ms(row["Max Response Time"]),
                ))  # fmt: skip
    failures = out / "locust_failures.csv"
    if failures.exists():
        with open(failures, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                report.failures.append(
                    f"{row['Method']} {row['Name']}: {row['Error']} x{row['Occurrences']}"
                )


def _feed(cluster: LocalCluster) -> list[dict[str, Any]]:
    """Every event of the leader's feed (the run is far below its retention)."""
    leader = cluster.wait_for_leader()
    events: list[dict[str, Any]] = []
    index = 0
    while True:
        page = cluster.get(leader, f"/v1/feed?from={index}&limit={FEED_PAGE}")
        if page.get("snapshot") is not None:
            raise RuntimeError("the feed no longer holds the run's first events")
        events += page["events"]
        if page["last_index"] <= index:
            return events
        index = page["last_index"]


def _attribute(cluster: LocalCluster, report: Report, run: BotsRun) -> None:
    run.units = attribute(_feed(cluster), PRODUCT)
    product = next(iter(report.products.values()), None)
    if product is None:
        return
    reserved = sum(u.reserved for u in run.units.values())
    sold = sum(u.sold for u in run.units.values())
    if (reserved, sold) != (product["reserved"], product["sold"]):
        run.problems.append(
            f"feed attribution (reserved {reserved}, sold {sold}) does not add up to the "
            f"product's (reserved {product['reserved']}, sold {product['sold']})"
        )
    scripted = run.bot_units() - run.kind_units("bot-farm")
    if scripted:
        run.problems.append(f"swarm, scripted or replay bots hold or bought {scripted} units")
    # The farm's first accounts behave exactly like a household's browsers behind one
    # address: docs/BOTS.md "Account farms" bounds what it gets (one address here, per-user
    # limit 1), it cannot make it zero without refusing households too.
    farm_bound = BotsConfig().accounts_per_ip
    if run.kind_units("bot-farm") > farm_bound:
        run.problems.append(
            f"the account farm got {run.kind_units('bot-farm')} units, over its bound of "
            f"{farm_bound} (accounts_per_ip x per-user limit 1 x one address)"
        )
    shopper = run.units.get("shopper", Units())
    if shopper.sold + shopper.reserved == 0:
        run.problems.append("shoppers got no unit")


def _gateway_view(cluster: LocalCluster, run: BotsRun) -> None:
    url = cluster.config.gateways[0].listen.url
    answer = cluster._http("GET", url + "/metrics")
    run.decisions = bot_decisions(answer.raw.decode())
    run.bots_doc = cluster._http("GET", url + "/internal/bots").body


def run_bots(args: argparse.Namespace) -> tuple[Report, BotsRun]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("locust*"):
        old.unlink()
    directory = out / "cluster"
    shutil.rmtree(directory, ignore_errors=True)
    report = Report(_machine(), args.users, args.spawn_rate, args.seconds)
    run = BotsRun(args.open_after, dict(zip(BOT_KINDS, args.bots, strict=True)))
    classes = ["Shopper"] + [c for c, n in zip(LOCUST_CLASSES, args.bots, strict=True) if n]
    cluster = LocalCluster(directory, args.nodes, gateways=1, bots=BOTS_ON)
    try:
        host, sandbox, opens_at_ms = open_sale(cluster, args.stock, args.open_after)
        report.load_before = _loadavg()
        print(f"sale opens in {args.open_after:g} s; locust: {args.users} users of which "
              f"bots {args.bots}, {args.seconds:g} s against {host}", flush=True)  # fmt: skip
        cpu_before, locust_before = _cluster_cpu(cluster), _children_cpu_s()
        env = {"LOAD_OPENS_AT_MS": str(opens_at_ms),
               "LOAD_BOTS": ",".join(str(n) for n in args.bots)}  # fmt: skip
        code = _run_locust(args, host, cluster.secret, report, locustfile=LOCUSTFILE,
                           env_extra=env, user_classes=classes)  # fmt: skip
        report.cpu_s["locust"] = _children_cpu_s() - locust_before
        for proc_id, used in _cluster_cpu(cluster).items():
            report.cpu_s[proc_id] = used - cpu_before.get(proc_id, 0.0)
        report.load_after = _loadavg()
        if code not in (0, 1):
            report.problems.append(f"locust exited with {code} (see {out / 'locust.log'})")
        _read_stats(out, args.seconds, report, run)
        _gateway_view(cluster, run)
        _settle_and_check(cluster, sandbox, args.stock, report)
        _attribute(cluster, report, run)
        cluster.stop()
    finally:
        cluster.kill_all()
    return report, run


# -- output -------------------------------------------------------------------------------


def _answer_table(what: str, answers: Mapping[str, Counter[str]]) -> list[str]:
    columns = ["2xx", "sale answer", *REFUSALS, "other"]
    used = [c for c in columns
            if any(column(a) == c for counts in answers.values() for a in counts)]  # fmt: skip
    lines = [
        f"| class ({what}) | requests | " + " | ".join(used) + " |",
        "|---|---:|" + "---:|" * len(used),
    ]
    for kind in CLASSES:
        counts = answers.get(kind)
        if not counts:
            continue
        by_column: Counter[str] = Counter()
        for answer, n in counts.items():
            by_column[column(answer)] += n
        cells = " | ".join(f"{by_column[c]:,}" for c in used)
        lines.append(f"| {kind} | {sum(counts.values()):,} | {cells} |")
    others = sorted({a for counts in answers.values() for a in counts if column(a) == "other"})
    if others:
        lines.append(f"(other: {', '.join(others)})")
    return lines


def bots_summary(run: BotsRun) -> str:
    """The shoppers-and-bots part of the summary, as Markdown."""
    lines = [
        f"sale opened {run.opens_after_s:g} s after locust started; bots (locust users): "
        + ", ".join(f"{k} {n}" for k, n in run.counts.items()),
        "",
        "| class | units ever held | reserved at the end | sold |",
        "|---|---:|---:|---:|",
    ]
    for kind in [*CLASSES, "other"]:
        if kind in run.units:
            u = run.units[kind]
            lines.append(f"| {kind} | {u.held} | {u.reserved} | {u.sold} |")
    lines += [
        "",
        f"**bots' share of the units: {run.bot_units()} of {run.all_units()} "
        f"({100 * run.bot_share():.1f} %)**",
        "",
    ]
    lines += _answer_table("every request", run.answers)
    lines += ["", *_answer_table(f"`{HOLD_ROUTE}` only", run.holds)]
    lines += ["", "gateway `flashsale_gateway_bot_decisions_total`:", ""]
    lines += [
        f"- {decision}/{reason}: {n:,}"
        for (decision, reason), n in sorted(run.decisions.items())
        if n
    ]
    doc = run.bots_doc
    if doc:
        on = [k for k, v in doc.get("defences", {}).items() if v]
        lines += [
            "",
            f"defences on: {', '.join(on)}; settings {doc.get('settings')}; "
            f"queue {doc.get('queue')}",
        ]
    if run.problems:
        lines += ["", "BOTS PROBLEMS:", *(f"- {p}" for p in run.problems)]
    return "\n".join(lines)


def _counts(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4 or min(parts) < 0:
        raise argparse.ArgumentTypeError("expected four counts: swarm,scripted,replay,farm")
    return parts[0], parts[1], parts[2], parts[3]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.run_bots", description=(
        "Shoppers and bots under locust against a local cluster with the bot defences "
        "on; prints who got the units and writes CSV/HTML reports."))  # fmt: skip
    p.add_argument("--users", type=int, default=150, help="locust users, bots included")
    p.add_argument("--bots", type=_counts, default=(5, 3, 2, 2),
                   help="locust users per bot kind: swarm,scripted,replay,farm")  # fmt: skip
    p.add_argument("--spawn-rate", type=float, default=20.0, help="users started per s")
    p.add_argument("--seconds", type=float, default=60.0, help="locust run time")
    p.add_argument("--stock", type=int, default=200, help="units on sale")
    p.add_argument("--open-after", type=float, default=12.0,
                   help="seconds from locust's start to the sale's opening")  # fmt: skip
    p.add_argument("--nodes", type=int, default=3, help="ledger nodes")
    p.add_argument("--out", type=Path, default=REPO / "var" / "load" / "bots", help="reports")
    p.set_defaults(guest=False)  # run_load's locust runner reads it: tokens signed here
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out = args.out.resolve()  # the cluster's processes run in its directory
    if sum(args.bots) >= args.users:
        raise SystemExit("--users must exceed the number of bots (the rest are shoppers)")
    report, run = run_bots(args)
    text = summary(report, args.stock) + "\n\n" + bots_summary(run)
    (args.out / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    failed = any(e.failures for e in report.endpoints)
    return 1 if report.problems or run.problems or failed else 0


if __name__ == "__main__":
    sys.exit(main())
