"""The Bots and queue page computed from what the gateways report (pure functions).

Theory of operation: every poll the console reads each gateway's ``GET /internal/bots``
document (or learns why it could not). ``gateway_json`` turns one into the row the page
shows: decisions counted since the gateway started, Redis, the waiting room, the
settings it enforces and how far it is from what operators decided. ``totals`` and
``reasons`` add the gateways up: counts are per process and simply add; the waiting
room is shared when every answering gateway uses a reachable Redis (each then reports
the same queue, so the total is one of them, not the sum). ``lists_json`` shows each
block/allow list as operators decided it and as the gateways hold it. ``plan`` is the
difference between the operators' record (admin.bots_store) and one gateway's document:
the settings and list changes to send it again, at most ``max_ops`` list changes per
poll so that one restarted gateway cannot hold up the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from admin.bots_store import Wanted
from admin.bots_values import LISTS, SETTINGS, Number, reported_entry, same_setting

DECISIONS = ("allowed", "limited", "challenged", "blocked", "queued")
DEFENCES = ("rate_limits", "challenge", "heuristics", "waiting_room")
QUEUE_COUNTS = ("issued", "admitted", "waiting")


@dataclass(frozen=True, slots=True)
class BotsReading:
    """One gateway as the last poll found it."""

    id: str
    listen: str
    doc: Mapping[str, Any] | None  # GET /internal/bots; None when it did not answer
    error: str | None = None  # why there is no document, or why a change did not apply
    reapplied: int = 0  # changes the console sent it again in this poll
    pending: int = 0  # changes it still lacks after this poll


@dataclass(frozen=True, slots=True)
class ListOp:
    list: str
    op: str  # add | remove
    value: str


@dataclass(frozen=True, slots=True)
class Plan:
    settings: Mapping[str, Number]
    ops: tuple[ListOp, ...]
    more: int = 0  # list changes left for a later poll (over max_ops)

    @property
    def size(self) -> int:
        return len(self.settings) + len(self.ops) + self.more

    @property
    def empty(self) -> bool:
        return self.size == 0


def _n(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def reported(doc: Mapping[str, Any] | None, list_: str) -> frozenset[str]:
    """The canonical entries of one list of a document (see admin.bots_values.entry)."""
    raw = _dict(doc.get("lists") if doc else None).get(list_)
    if not isinstance(raw, list):
        return frozenset()
    found = (reported_entry(list_, v) for v in raw)
    return frozenset(v for v in found if v is not None)


def plan(wanted: Wanted, doc: Mapping[str, Any], max_ops: int) -> Plan:
    """What to send a gateway so it enforces what operators decided (nothing to one whose
    defences are off: it refuses changes)."""
    if not doc.get("enabled"):
        return Plan({}, ())
    have = _dict(doc.get("settings"))
    settings = {
        name: value
        for name, value in wanted.settings.items()
        if not same_setting(name, have.get(name), value)
    }
    ops: list[ListOp] = []
    for list_ in LISTS:
        on = reported(doc, list_)
        ops += [ListOp(list_, "add", v) for v in sorted(wanted.entries(list_) - on)]
        ops += [ListOp(list_, "remove", v) for v in sorted(wanted.tombstones(list_) & on)]
    return Plan(settings, tuple(ops[:max_ops]), max(0, len(ops) - max_ops))


def counts(doc: Mapping[str, Any] | None) -> dict[str, int]:
    c = _dict(doc.get("counts") if doc else None)
    return {d: _n(c.get(d)) for d in DECISIONS}


def gateway_json(reading: BotsReading) -> dict[str, Any]:
    """One gateway's row of the page (JSON for the live stream as well)."""
    doc = reading.doc
    up = doc is not None
    queue = _dict(doc.get("queue") if doc else None)
    redis = _dict(doc.get("redis") if doc else None)
    defences = _dict(doc.get("defences") if doc else None)
    settings = _dict(doc.get("settings") if doc else None)
    return {
        "id": reading.id,
        "listen": reading.listen,
        "up": up,
        "error": reading.error,
        "enabled": bool(doc.get("enabled")) if doc else None,
        "defences": {d: bool(defences.get(d)) for d in DEFENCES} if up else {},
        "redis": {"configured": bool(redis.get("configured")), "ok": bool(redis.get("ok"))}
        if up
        else None,
        "counts": counts(doc) if up else None,
        "queue": {
            **{k: _n(queue.get(k)) for k in QUEUE_COUNTS},
            "opens_at": _num(queue.get("opens_at")),
            "admission_rate": _num(queue.get("admission_rate")),
        }
        if up
        else None,
        "settings": {s: settings.get(s) for s in SETTINGS} if up else None,
        "lists": {n: len(reported(doc, n)) for n in LISTS} if up else None,
        "reapplied": reading.reapplied,
        "pending": reading.pending,
        "sync": sync_text(reading),
        "defences_text": defences_text(doc),
        "redis_text": redis_text(doc),
    }


def defences_text(doc: Mapping[str, Any] | None) -> str:
    """Which defences a gateway runs, in words."""
    if doc is None:
        return ""
    if not doc.get("enabled"):
        return "all off ([bots] enabled = false)"
    on = _dict(doc.get("defences"))
    names = [d.replace("_", " ") for d in DEFENCES if on.get(d)]
    return ", ".join(names) if names else "all off"


def redis_text(doc: Mapping[str, Any] | None) -> str:
    """Whether a gateway shares its limits and queue through Redis, in words."""
    if doc is None:
        return ""
    redis = _dict(doc.get("redis"))
    if not redis.get("configured"):
        return "not configured (local)"
    return "ok (shared)" if redis.get("ok") else "unreachable: local fallback"


def sync_text(reading: BotsReading) -> str:
    """Whether a gateway enforces what operators decided, in a few words."""
    if reading.doc is None:
        return "unknown (no answer)"
    if not reading.doc.get("enabled"):
        return "defences off"
    if reading.pending:
        return f"{reading.pending} change(s) pending"
    if reading.reapplied:
        return f"in sync (re-applied {reading.reapplied})"
    return "in sync"


def shared_queue(readings: Sequence[BotsReading]) -> bool:
    """True when every answering gateway keeps its queue in a reachable Redis."""
    up = [r.doc for r in readings if r.doc is not None]
    return bool(up) and all(
        _dict(d.get("redis")).get("configured") is True and _dict(d.get("redis")).get("ok") is True
        for d in up
    )


def totals(readings: Sequence[BotsReading]) -> dict[str, Any]:
    """Counts added over the gateways that answered, and the waiting room as a whole."""
    up = [r.doc for r in readings if r.doc is not None]
    total = {d: sum(counts(doc)[d] for doc in up) for d in DECISIONS}
    shared = shared_queue(readings)
    queues = [_dict(doc.get("queue")) for doc in up]
    queue: dict[str, Any] = {}
    for key in QUEUE_COUNTS:
        values = [_n(q.get(key)) for q in queues]
        queue[key] = max(values, default=0) if shared else sum(values)
    rates = [r for r in (_num(q.get("admission_rate")) for q in queues) if r is not None]
    queue["admission_rate"] = (max(rates) if shared else sum(rates)) if rates else None
    return {
        "counts": total,
        "queue": queue,
        "queue_shared": shared,
        "gateways_up": len(up),
        "gateways": len(readings),
    }


def reasons(readings: Sequence[BotsReading]) -> list[dict[str, Any]]:
    """One row per decision/reason seen on any gateway: the total and each gateway's."""
    rows: dict[str, dict[str, Any]] = {}
    for reading in readings:
        by_reason = _dict(
            _dict(reading.doc.get("counts")).get("by_reason") if reading.doc else None
        )
        for key, value in by_reason.items():
            decision, _, reason = str(key).partition("/")
            row = rows.setdefault(
                key,
                {"key": key, "decision": decision, "reason": reason, "total": 0, "by_gateway": {}},
            )
            row["total"] += _n(value)
            row["by_gateway"][reading.id] = _n(value)
    order = {d: i for i, d in enumerate(DECISIONS)}
    return sorted(
        rows.values(), key=lambda r: (order.get(r["decision"], 99), -r["total"], r["key"])
    )


def _entry_state(value: str, wanted_on: frozenset[str], wanted_off: frozenset[str]) -> str:
    if value in wanted_on:
        return "present"
    if value in wanted_off:
        return "removed"
    return "gateway only"


def lists_json(
    wanted: Wanted, readings: Sequence[BotsReading], limit: int
) -> dict[str, dict[str, Any]]:
    """Each list: its entries (at most ``limit``, sorted), which gateways hold each and
    which answering gateways still lack it; ``total`` counts every entry."""
    up = [r for r in readings if r.doc is not None]
    out: dict[str, dict[str, Any]] = {}
    for list_ in LISTS:
        held = {r.id: reported(r.doc, list_) for r in up}
        on, off = wanted.entries(list_), wanted.tombstones(list_)
        values = set(on) | set().union(*held.values())
        entries = [
            {
                "value": v,
                "state": _entry_state(v, on, off),
                "on": [r.id for r in up if v in held[r.id]],
                "missing": [r.id for r in up if v not in held[r.id]],
            }
            for v in sorted(values)[:limit]
        ]
        out[list_] = {"entries": entries, "total": len(values), "shown": len(entries)}
    return out


def current_settings(
    wanted: Wanted, readings: Iterable[BotsReading], defaults: Mapping[str, Number]
) -> dict[str, Number]:
    """The value each setting has now: the operators' when they set one, else what the
    first answering gateway enforces, else cluster.toml's."""
    out = dict(defaults)
    for reading in readings:
        if reading.doc is not None:
            have = _dict(reading.doc.get("settings"))
            for name in SETTINGS:
                value = have.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[name] = value
            break
    out.update(wanted.settings)
    return out


def snapshot(
    at_ms: int,
    readings: Sequence[BotsReading],
    wanted: Wanted,
    defaults: Mapping[str, Number],
    list_limit: int,
) -> dict[str, Any]:
    """The whole page as JSON: what the live stream pushes."""
    return {
        "at_ms": at_ms,
        "gateways": [gateway_json(r) for r in readings],
        "totals": totals(readings),
        "reasons": reasons(readings),
        "settings": current_settings(wanted, readings, defaults),
        "wanted_settings": dict(wanted.settings),
        "lists": lists_json(wanted, readings, list_limit),
    }
