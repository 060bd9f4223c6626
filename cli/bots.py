"""``flashsale bots``: the gateways' bot defences from the command line.

``status`` shows what every gateway reports (``GET /internal/bots``); ``set``, ``block``,
``allow`` and ``unblock`` change every gateway of the config through the same internal
API the console uses, and record the change in the console's database under data_dir
(audited as operator ``cli``, like ``flashsale admin create-operator``), so that the
console keeps it and re-applies it to a gateway that restarts without Redis. Run it where
the console's data_dir is; elsewhere the console would not know the change and a
restarted gateway would not get it back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import uvloop

from admin import audit, bots_store
from admin.bots_gateways import BotsApi, GatewayAnswer, outcome_text
from admin.bots_hub import answers_json
from admin.bots_values import Number, entry, kind_of, setting
from admin.bots_view import BotsReading, gateway_json, totals
from admin.product_forms import FormError
from admin.store import admin_db_path, open_store
from cli.failure import EXIT_USAGE, Failure
from cli.tables import render
from cluster.config import ClusterConfig

ACTOR = "cli"  # the operator name the audit log keeps for these changes
TIMEOUT_S = 5.0  # one call to one gateway
HEADER = ("GATEWAY", "UP", "DIFFICULTY", "ADMISSION/S", "BLOCK SCORE", "ALLOWED", "LIMITED",
          "CHALLENGED", "BLOCKED", "QUEUED", "WAITING", "REDIS")  # fmt: skip


def _with_api(
    config: ClusterConfig, work: Callable[[BotsApi], Awaitable[list[GatewayAnswer]]]
) -> list[GatewayAnswer]:
    """Run ``work`` against every gateway of the config, in a loop of its own."""

    async def go() -> list[GatewayAnswer]:
        async with aiohttp.ClientSession() as http:
            return await work(BotsApi(config, http))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(go())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def status_table(config: ClusterConfig, answers: list[GatewayAnswer]) -> str:
    """One row per gateway and a total row (pure: tested without gateways)."""
    readings = [
        BotsReading(g.id, str(g.listen), a.doc, a.error)
        for g, a in zip(config.gateways, answers, strict=True)
    ]
    rows = []
    for reading in readings:
        g = gateway_json(reading)
        if not g["up"]:
            rows.append([g["id"], "no", *["-"] * 9, str(g["error"])])
            continue
        s, c, q = g["settings"], g["counts"], g["queue"]
        rows.append(
            [g["id"], "yes", *(_cell(s[k]) for k in ("challenge_difficulty", "admission_rate",
                                                     "block_score")),
             *(_cell(c[k]) for k in ("allowed", "limited", "challenged", "blocked", "queued")),
             _cell(q["waiting"]), g["redis_text"]]
        )  # fmt: skip
    t = totals(readings)
    c = t["counts"]
    rows.append(
        ["total", f"{t['gateways_up']}/{t['gateways']}", "", "", "",
         *(_cell(c[k]) for k in ("allowed", "limited", "challenged", "blocked", "queued")),
         _cell(t["queue"]["waiting"]), "shared queue" if t["queue_shared"] else ""]
    )  # fmt: skip
    return render(HEADER, rows)


def lists_text(answers: list[GatewayAnswer]) -> str:
    """The lists of the first gateway that answered."""
    doc = next((a.doc for a in answers if a.doc is not None), None)
    if doc is None:
        return "lists: no gateway answered"
    lines = []
    for name, values in sorted((doc.get("lists") or {}).items()):
        shown = ", ".join(str(v) for v in values[:20]) or "(empty)"
        more = f" … and {len(values) - 20} more" if len(values) > 20 else ""
        lines.append(f"{name}: {shown}{more}")
    return "\n".join(lines)


def status(config: ClusterConfig) -> tuple[str, bool]:
    """The status text, and whether every gateway answered."""
    answers = _with_api(config, lambda api: api.fetch_all(TIMEOUT_S))
    text = status_table(config, answers) + "\n\n" + lists_text(answers)
    return text, all(a.ok for a in answers)


def parse_settings(values: Mapping[str, str | None]) -> dict[str, Number]:
    """The settings given on the command line, checked like the console's form."""
    out: dict[str, Number] = {}
    for name, text in values.items():
        if text is None:
            continue
        try:
            out[name] = setting(name, text)
        except FormError as exc:
            raise Failure(str(exc), EXIT_USAGE) from None
    if not out:
        raise Failure(
            "nothing to set: give --difficulty, --admission-rate or --block-score", EXIT_USAGE
        )
    return out


def list_entry(kind: str, value: str, shopper: bool) -> tuple[str, str]:
    """(list, canonical value) for ``block``/``allow`` (kind) of an IP, network or shopper."""
    which = "shoppers" if shopper else kind_of(value)
    list_ = f"{kind}_{which}"
    try:
        return list_, entry(list_, value)
    except FormError as exc:
        raise Failure(exc.message, EXIT_USAGE) from None


def _record(config: ClusterConfig, write: Callable[[sqlite3.Connection, int], None]) -> None:
    conn = open_store(admin_db_path(config.data_dir))
    try:
        write(conn, int(time.time() * 1000))
    finally:
        conn.close()


def _audit(config: ClusterConfig, action: str, target: str, details: Mapping[str, Any]) -> None:
    _record(
        config,
        lambda conn, now: audit.record(
            conn, at_ms=now, operator=ACTOR, action=action, target=target, details=details
        ),
    )


def set_settings(config: ClusterConfig, values: Mapping[str, Number]) -> tuple[str, bool]:
    """Record and send settings; (the outcome line, whether every gateway took them)."""
    _record(config, lambda conn, now: bots_store.set_settings(conn, values, at_ms=now, by=ACTOR))
    answers = _with_api(config, lambda api: api.put_settings_all(values, TIMEOUT_S))
    _audit(config, "bots.settings", "gateways", {"set": dict(values),
                                                  "outcome": answers_json(answers)})  # fmt: skip
    shown = ", ".join(f"{k} = {v}" for k, v in values.items())
    return f"set {shown}: {outcome_text(answers)}", all(a.ok for a in answers)


def change_list(config: ClusterConfig, list_: str, op: str, value: str) -> tuple[str, bool]:
    """Record and send one list change; (the outcome line, whether every gateway took it)."""
    cap = config.bots.max_list_entries

    def write(conn: sqlite3.Connection, now: int) -> None:
        if op == "add":
            bots_store.add_entry(conn, list_, value, cap=cap, at_ms=now, by=ACTOR)
        else:
            bots_store.remove_entry(conn, list_, value, cap=cap, at_ms=now, by=ACTOR)

    try:
        _record(config, write)
    except bots_store.ListFull as exc:
        raise Failure(str(exc)) from None
    answers = _with_api(config, lambda api: api.change_list_all(list_, op, value, TIMEOUT_S))
    _audit(config, f"bots.list.{op}", f"{list_}:{value}",
           {"list": list_, "value": value, "outcome": answers_json(answers)})  # fmt: skip
    verb = "added" if op == "add" else "removed"
    where = "to" if op == "add" else "from"
    return f"{verb} {value} {where} {list_}: {outcome_text(answers)}", all(a.ok for a in answers)
