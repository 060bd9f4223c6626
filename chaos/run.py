"""One chaos run, end to end: start a cluster, sell under faults, recover, judge.

Theory of operation: ``run_chaos`` builds a fresh cluster in the output folder (proxy,
3 routed nodes, 2 gateways, the order-snapshot writer on a SQLite store;
``chaos.topology``), starts it, creates the sale's products,
and then, for ``duration_s`` seconds, runs the workload and the nemesis side by side
while the feed recorder follows the log. Afterwards it heals whatever is left, lets the
shoppers' last operations finish, waits past every hold and payment deadline (nothing
may stay reserved), waits until every node holds the same ledger, collects the final
state, waits until the snapshot writer has applied the final ledger index and reads its
rows, and hands history and final state to the pure checker. Every process it started
is stopped, then SIGKILLed by pid, on every way out.

The output folder holds ``history.jsonl`` (every operation and fault), ``feed.jsonl``
(every committed event), ``final.json`` (the final state and the feed, the checker's
second input), ``report.json`` (verdict, counts, schedule, settings) and ``cluster/``
(config and process logs). ``recheck(folder)`` judges a saved run again.

``run_target`` drives the same sale against a cluster that is already running (its
cluster.toml given). It starts no process. When the cluster runs under ``flashsale up``
(which publishes its children's pids, ``chaos.target``) it injects the scenario's
process faults (kills, pauses, a whole-cluster kill; the supervisor restarts what was
killed); otherwise it injects none. Network, disk and clock faults need the run's own
proxy and launcher. It does not
read a snapshot store (the cluster's writer may not run, or lag). It creates two
products of its own (ids tagged per run, as are its shoppers and keys), sells them,
waits for their deadlines and judges the history and the whole log with the same
checker: a workload-and-checker run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import uvloop

from chaos.checker import Verdict, check
from chaos.history import History, load_history
from chaos.launcher import Launcher
from chaos.nemesis import PROCESS_FAULTS, Nemesis, schedule
from chaos.observer import FeedRecorder, lookup, node_states, read_store, wait_store
from chaos.proxy import ProxyControl
from chaos.scenarios import SCENARIOS, Scenario
from chaos.target import SupervisedProcesses
from chaos.topology import build_topology
from chaos.workload import Workload
from cluster.client import ClusterClient
from cluster.config import ClusterConfig, load_config

# The sale's cluster: Raft timing as in cluster.toml, a shorter commit timeout so unknown
# outcomes resolve quickly, and payments due 6 s after checkout so orders expire in-run.
RAFT = {
    "append_entries_period_ms": 30,
    "election_timeout_min_ms": 300,
    "election_timeout_max_ms": 600,
    "commit_timeout_ms": 3000,
    "expire_period_ms": 250,
    # A dump every 300 entries (every few tens of seconds here): restarts load dumps and
    # followers that fell behind install the leader's snapshot during the run.
    "log_compaction_entries": 300,
}
LEDGER = {"payment_ttl_s": 6}
# Gateways answer within 2.5 s (503 when the cluster could not confirm by then), so an
# outage longer than that reaches the shoppers, who retry with the same keys: the retry
# path and the idempotency of every write are exercised end to end, not only inside
# the gateway.
GATEWAY = {"request_deadline_ms": 2500}
EXPIRY_TOLERANCE_MS = 0  # in ledger time the expiry rule is exact
LEADER_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 90.0
DRAIN_MARGIN_S = 30.0  # beyond the last deadline, for the expiry ticker and elections
POLL_S = 0.25
MIN_DURATION_S = 5
TARGET_MAX_DRAIN_S = 60  # longest payment deadline a target run waits for at the end


async def _wait_ready(session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status == 200:
                    return
        if loop.time() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s:g}s")
        await asyncio.sleep(POLL_S)


async def _drain(
    client: ClusterClient, timeout_s: float, products: set[str] | None = None
) -> bool:
    """Wait until no node has a unit reserved (every hold and unpaid order ended) of any
    product, or of ``products``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        states = await node_states(client)
        if all(
            s is not None
            and all(
                p["reserved"] == 0
                for p in s["products"]
                if products is None or p["product_id"] in products
            )
            for s in states.values()
        ):
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(POLL_S)


async def _converge(client: ClusterClient, timeout_s: float) -> dict[str, dict[str, Any] | None]:
    """Wait until every node answers with the same ledger index and digest."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        states = await node_states(client)
        seen = {(s["ledger_index"], s["digest"]) for s in states.values() if s is not None}
        if len(seen) == 1 and all(s is not None for s in states.values()):
            return states
        if loop.time() > deadline:
            return states
        await asyncio.sleep(POLL_S)


def _acknowledged(history: History, op: str, field: str) -> list[str]:
    return [
        str(r["result"][field])
        for r in history.records
        if r["type"] == "ok" and r.get("op") == op and field in (r.get("result") or {})
    ]


async def _run(
    scenario: Scenario, duration_s: float, seed: int, out: Path, say: TextIO
) -> tuple[Verdict, dict[str, Any]]:
    topology = build_topology(out / "cluster", raft=RAFT, ledger=LEDGER, gateway=GATEWAY)
    launcher = Launcher(topology)
    history = History(out / "history.jsonl")
    faults = schedule(scenario.mix, seed, duration_s)
    report: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "duration_s": duration_s,
        "schedule": [f.to_json() for f in faults],
        "command": f"flashsale chaos run --scenario {scenario.name} --duration "
        f"{duration_s:g} --seed {seed}",
    }
    recorder: FeedRecorder | None = None
    recorder_task: asyncio.Task[None] | None = None
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            ClusterClient(topology.config, session) as client,
        ):
            proxy = ProxyControl(session, topology.proxy_control)
            nemesis = Nemesis(launcher, proxy, client, session, history)
            launcher.start("proxy")
            await launcher.wait_healthy(session, "proxy")
            for node_id in topology.node_ids:
                launcher.start(node_id)
            for node_id in topology.node_ids:
                await launcher.wait_healthy(session, node_id)
            if await nemesis.leader(LEADER_TIMEOUT_S) is None:
                raise TimeoutError(f"no leader after {LEADER_TIMEOUT_S:g}s")
            for writer_id in topology.writer_ids:
                launcher.start(writer_id)
                await launcher.wait_healthy(session, writer_id)
            recorder = FeedRecorder(topology.config, session, out / "feed.jsonl")
            recorder_task = asyncio.create_task(recorder.run(), name="feed-recorder")
            workload = Workload(topology.config, scenario.plan, seed, history, session, client)
            for n, product in enumerate(scenario.plan.products):
                command = product.create_command(f"create-{seed}-{n}")
                if await workload.internal("admin", "create_product", command) != "ok":
                    raise RuntimeError(f"could not create {product.product_id}")
            for gateway_id in topology.gateway_ids:
                launcher.start(gateway_id)
            for gateway_id in topology.gateway_ids:
                await launcher.wait_healthy(session, gateway_id)
                url = topology.config.gateway(gateway_id).listen.url + "/readyz"
                await _wait_ready(session, url, READY_TIMEOUT_S)
            say.write(f"chaos: {scenario.name}, seed {seed}, {duration_s:g} s, "
                      f"{len(faults)} faults scheduled, output in {out}\n")
            say.flush()

            started_at = asyncio.get_running_loop().time()
            shopping = asyncio.create_task(workload.run(duration_s), name="workload")
            await nemesis.run(faults, started_at, duration_s)
            await nemesis.heal_all()
            await shopping
            elapsed_s = asyncio.get_running_loop().time() - started_at
            say.write(f"chaos: sale over after {elapsed_s:.0f} s; waiting for every deadline "
                      "and for the nodes to converge\n")
            say.flush()

            longest_s = (max(p.hold_ttl_ms for p in scenario.plan.products) / 1000
                         + LEDGER["payment_ttl_s"])
            # A clock that ran ahead left ledger time ahead of the true clocks: deadlines
            # stamped then pass (and expire) that much later.
            longest_s += nemesis.skew_ahead_s
            drained = await _drain(client, longest_s + DRAIN_MARGIN_S)
            states = await _converge(client, CONVERGE_TIMEOUT_S)
            indexes = [s["ledger_index"] for s in states.values() if s is not None]
            await recorder.wait_for(max(indexes, default=0), CONVERGE_TIMEOUT_S)
            holds = await lookup(client, "hold", _acknowledged(history, "reserve", "hold_id"))
            orders = await lookup(
                client, "order", _acknowledged(history, "checkout", "order_id")
            )
            recorder.stop()
            await recorder_task
            store: dict[str, Any] | None = None
            if topology.writer_ids:
                url = topology.config.storage.url
                await wait_store(url, recorder.last_index, CONVERGE_TIMEOUT_S)
                store = await asyncio.to_thread(read_store, url)
            final = {
                "events": recorder.entries,
                "feed_last_index": recorder.last_index,
                "nodes": states,
                "holds": holds,
                "orders": orders,
                "expect_drained": True,
                "drained": drained,
                "tolerance_ms": EXPIRY_TOLERANCE_MS,
                "store": store,
            }
            report["nemesis"] = {
                "applied": nemesis.applied,
                "skipped": nemesis.skipped,
                "errors": nemesis.errors,
                "notes": nemesis.notes,
                "skews_led": nemesis.skews_led,
                "slow_syncs": nemesis.slow_syncs,
                "slow_sync_s": round(nemesis.slow_sync_s, 3),
                "process_starts": launcher.starts,
            }
            report["workload"] = {"outcomes": workload.stats.by_outcome}
    finally:
        if recorder is not None:
            recorder.stop()
        if recorder_task is not None and not recorder_task.done():
            recorder_task.cancel()
        launcher.stop_all()
        launcher.kill_all()
        history.close()
    (out / "final.json").write_text(json.dumps(final, separators=(",", ":")), encoding="utf-8")
    verdict = check(history.records, final, expiry_tolerance_ms=EXPIRY_TOLERANCE_MS)
    if nemesis.errors:
        verdict.notes.append(f"{len(nemesis.errors)} fault(s) could not be applied or undone")
    verdict.notes.extend(nemesis.notes)
    return verdict, report


async def _leader(client: ClusterClient, timeout_s: float) -> str | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        statuses = await client.status_all()
        leaders = [n for n, st in statuses.items() if st is not None and st.get("role") == "leader"]
        if leaders:
            return leaders[0]
        if loop.time() > deadline:
            return None
        await asyncio.sleep(POLL_S)


async def _run_target(
    config: ClusterConfig, scenario: Scenario, duration_s: float, seed: int, out: Path,
    say: TextIO,
) -> tuple[Verdict, dict[str, Any]]:
    """The sale against a running cluster: no process started; process faults only when
    ``flashsale up`` publishes its children's pids (module doc)."""
    tag = f"t{secrets.token_hex(3)}-"
    plan = dataclasses.replace(
        scenario.plan,
        products=tuple(
            dataclasses.replace(p, product_id=f"{p.product_id}-{tag[:-1]}")
            for p in scenario.plan.products
        ),
    )
    history = History(out / "history.jsonl")
    processes = SupervisedProcesses(config)
    layout = processes.topology
    supervised = set(processes.published()) == {*layout.node_ids, *layout.gateway_ids}
    mix = scenario.mix.only(PROCESS_FAULTS)
    faults = schedule(mix, seed, duration_s) if supervised and mix.weights else []
    report: dict[str, Any] = {
        "scenario": "target",
        "description": (
            f"workload and checker against a running cluster; the process faults of "
            f"{scenario.name} ({', '.join(k.value for k, _ in mix.weights)}) by the pids "
            f"in {processes.directory}"
            if supervised
            else "workload and checker against a running cluster; no faults injected (no "
            f"pid files in {processes.directory})"
        ),
        "target": str(config.path),
        "target_scenario": scenario.name,
        "seed": seed,
        "tag": tag,
        "duration_s": duration_s,
        "schedule": [f.to_json() for f in faults],
        "command": f"flashsale chaos run --target --config {config.path} --scenario "
        f"{scenario.name} --duration {duration_s:g} --seed {seed}",
    }
    recorder: FeedRecorder | None = None
    recorder_task: asyncio.Task[None] | None = None
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            ClusterClient(config, session) as client,
        ):
            if await _leader(client, LEADER_TIMEOUT_S) is None:
                raise TimeoutError(f"no leader after {LEADER_TIMEOUT_S:g}s")
            for gateway in config.gateways:
                await _wait_ready(session, gateway.listen.url + "/readyz", READY_TIMEOUT_S)
            recorder = FeedRecorder(config, session, out / "feed.jsonl")
            recorder_task = asyncio.create_task(recorder.run(), name="feed-recorder")
            workload = Workload(config, plan, seed, history, session, client, tag=tag)
            for n, product in enumerate(plan.products):
                command = product.create_command(f"create-{tag}{seed}-{n}")
                if await workload.internal("admin", "create_product", command) != "ok":
                    raise RuntimeError(f"could not create {product.product_id}")
            what = f"{len(faults)} faults scheduled" if supervised else "no faults"
            say.write(f"chaos: target {config.path}, seed {seed}, {duration_s:g} s, {what} "
                      f"(products {', '.join(p.product_id for p in plan.products)}), output "
                      f"in {out}\n")
            say.flush()
            nemesis = Nemesis(processes, None, client, session, history)
            started_at = asyncio.get_running_loop().time()
            shopping = asyncio.create_task(workload.run(duration_s), name="workload")
            try:
                await nemesis.run(faults, started_at, duration_s)
                if supervised:
                    await nemesis.heal_all()
            finally:
                await shopping
            ours = {p.product_id for p in plan.products}
            # Unpaid orders hold their units until the cluster's payment deadline: wait
            # for it only when it is short (the chaos cluster's is 6 s, a shop's minutes).
            payment_s = config.ledger.payment_ttl_s
            expect_drained = payment_s <= TARGET_MAX_DRAIN_S
            longest_s = max(p.hold_ttl_ms for p in plan.products) / 1000
            longest_s += payment_s if expect_drained else 0
            drained = await _drain(client, longest_s + DRAIN_MARGIN_S, ours)
            states = await _converge(client, CONVERGE_TIMEOUT_S)
            indexes = [st["ledger_index"] for st in states.values() if st is not None]
            await recorder.wait_for(max(indexes, default=0), CONVERGE_TIMEOUT_S)
            holds = await lookup(client, "hold", _acknowledged(history, "reserve", "hold_id"))
            orders = await lookup(
                client, "order", _acknowledged(history, "checkout", "order_id")
            )
            recorder.stop()
            await recorder_task
            final = {
                "events": recorder.entries,
                "feed_last_index": recorder.last_index,
                "nodes": states,
                "holds": holds,
                "orders": orders,
                "expect_drained": expect_drained,
                "drain_products": sorted(ours),
                "drained": drained,
                "tolerance_ms": EXPIRY_TOLERANCE_MS,
                "store": None,
            }
            report["nemesis"] = {
                "applied": nemesis.applied,
                "skipped": nemesis.skipped,
                "errors": nemesis.errors,
                "notes": nemesis.notes,
                "process_starts": processes.starts,
            }
            report["workload"] = {"outcomes": workload.stats.by_outcome}
    finally:
        if recorder is not None:
            recorder.stop()
        if recorder_task is not None and not recorder_task.done():
            recorder_task.cancel()
        history.close()
    (out / "final.json").write_text(json.dumps(final, separators=(",", ":")), encoding="utf-8")
    verdict = check(history.records, final, expiry_tolerance_ms=EXPIRY_TOLERANCE_MS)
    if supervised:
        verdict.notes.append("target mode: process faults by the pids of flashsale up, "
                             "snapshot store not checked")
    else:
        verdict.notes.append("target mode: no faults injected (no pid files), snapshot store "
                             "not checked")
    if not final["expect_drained"]:
        verdict.notes.append(
            f"payments are due {config.ledger.payment_ttl_s} s after checkout here: the run "
            "did not wait for unpaid orders to expire, so 'nothing left reserved' was not "
            "checked"
        )
    return verdict, report


def run_chaos(
    scenario_name: str,
    duration_s: float,
    seed: int | None = None,
    out_dir: Path | None = None,
    *,
    say: TextIO | None = None,
    target: Path | None = None,
) -> int:
    """Run one scenario and print its verdict; exit status 0 when it passed.

    With ``target`` (a running cluster's cluster.toml): the workload and the checker only,
    against that cluster (``run_target``'s rules in the module docstring)."""
    out_stream = say if say is not None else sys.stdout
    scenario = SCENARIOS.get(scenario_name)
    if scenario is None:
        raise ValueError(f"unknown scenario {scenario_name!r}: one of {sorted(SCENARIOS)}")
    if duration_s < MIN_DURATION_S:
        raise ValueError(f"duration {duration_s:g} s: at least {MIN_DURATION_S} s")
    if seed is None:
        seed = random.SystemRandom().randrange(1, 1 << 31)
    config = load_config(target) if target is not None else None
    if config is not None and not scenario.mix.only(PROCESS_FAULTS).weights:
        raise ValueError(f"scenario {scenario_name!r} has no process fault, the only kind a "
                         "--target run can inject")
    name = scenario_name if config is None else "target"
    out = out_dir if out_dir is not None else Path("var") / "chaos" / f"{name}-{seed}"
    # Absolute: the processes of the run are started inside the folder (their cwd).
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            if config is not None:
                verdict, report = runner.run(
                    _run_target(config, scenario, duration_s, seed, out, out_stream)
                )
            else:
                verdict, report = runner.run(_run(scenario, duration_s, seed, out, out_stream))
    except (TimeoutError, RuntimeError, OSError, aiohttp.ClientError) as exc:
        # The cluster could not be started or did not recover: no verdict is possible.
        aborted = {"scenario": name, "seed": seed, "aborted": f"{type(exc).__name__}: "
                   f"{exc}", "passed": False}
        (out / "report.json").write_text(json.dumps(aborted, indent=2), encoding="utf-8")
        out_stream.write(f"chaos: run aborted, no verdict: {aborted['aborted']}\n"
                         f"logs: {out / 'cluster' / 'logs'}\n")
        out_stream.flush()
        return 1
    errors = report.get("nemesis", {}).get("errors", [])
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    report["verdict"] = verdict.to_json()
    report["passed"] = verdict.ok and not errors
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    out_stream.write(verdict.summary() + "\n")
    for error in errors:
        out_stream.write(f"  nemesis error: {error}\n")
    out_stream.write(f"report: {out / 'report.json'}\nreproduce: {report['command']}\n")
    out_stream.flush()
    return 0 if report["passed"] else 1


def recheck(run_dir: Path) -> Verdict:
    """Judge a saved run again from its history.jsonl and final.json."""
    history = load_history(run_dir / "history.jsonl")
    final = json.loads((run_dir / "final.json").read_text(encoding="utf-8"))
    return check(history, final, expiry_tolerance_ms=int(final.get("tolerance_ms", 0)))
