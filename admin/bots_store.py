"""What operators decided for the gateways' bot defences, kept in the console database.

Theory of operation: a gateway holds its settings and lists in memory (and in Redis when
it has one), so a gateway restarted without Redis comes back with the numbers of
cluster.toml and empty lists. The console therefore records every change an operator
makes (from the console or ``flashsale bots``): the settings they set, and for each list
entry whether it should be present or removed. ``wanted`` reads that record; the console
compares it with what each gateway reports and sends the difference again
(admin.bots_view.plan). A removal is kept as a tombstone (present = 0) so that a gateway
that still has the entry loses it; entries nobody changed through the console are left
alone. Each list holds at most ``cap`` present entries (the gateways' max_list_entries)
and at most ``cap`` tombstones (the oldest are forgotten).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

from admin.bots_values import LISTS, SETTINGS, Number


class ListFull(ValueError):
    """The list already holds its maximum number of entries."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """The operators' decisions: settings by name, and per list the entries that should be
    present and those that should not."""

    settings: Mapping[str, Number] = field(default_factory=dict)
    present: Mapping[str, frozenset[str]] = field(default_factory=dict)
    removed: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def entries(self, list_: str) -> frozenset[str]:
        return self.present.get(list_, frozenset())

    def tombstones(self, list_: str) -> frozenset[str]:
        return self.removed.get(list_, frozenset())


def wanted(conn: sqlite3.Connection) -> Wanted:
    """Everything recorded, as one value."""
    settings: dict[str, Number] = {}
    for row in conn.execute("SELECT name, value FROM bot_settings"):
        value = json.loads(row["value"])
        if row["name"] in SETTINGS and isinstance(value, int | float):
            settings[str(row["name"])] = value
    present: dict[str, set[str]] = {n: set() for n in LISTS}
    removed: dict[str, set[str]] = {n: set() for n in LISTS}
    for row in conn.execute("SELECT list, value, present FROM bot_entries"):
        if row["list"] in LISTS:
            (present if row["present"] else removed)[str(row["list"])].add(str(row["value"]))
    return Wanted(
        settings,
        {n: frozenset(v) for n, v in present.items()},
        {n: frozenset(v) for n, v in removed.items()},
    )


def set_settings(
    conn: sqlite3.Connection, values: Mapping[str, Number], *, at_ms: int, by: str
) -> None:
    """Record settings (checked already: admin.bots_values)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, value in values.items():
            conn.execute(
                "INSERT INTO bot_settings (name, value, set_at_ms, set_by) VALUES (?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value, "
                "set_at_ms = excluded.set_at_ms, set_by = excluded.set_by",
                (name, json.dumps(value), at_ms, by),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _count(conn: sqlite3.Connection, list_: str, present: int) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM bot_entries WHERE list = ? AND present = ?", (list_, present)
    ).fetchone()
    return int(row[0])


def _put(
    conn: sqlite3.Connection, list_: str, value: str, present: int, at_ms: int, by: str
) -> None:
    conn.execute(
        "INSERT INTO bot_entries (list, value, present, changed_at_ms, changed_by) "
        "VALUES (?,?,?,?,?) ON CONFLICT(list, value) DO UPDATE SET present = excluded.present, "
        "changed_at_ms = excluded.changed_at_ms, changed_by = excluded.changed_by",
        (list_, value, present, at_ms, by),
    )


def add_entry(
    conn: sqlite3.Connection, list_: str, value: str, *, cap: int, at_ms: int, by: str
) -> None:
    """Record that ``value`` belongs on ``list_``; ListFull when ``cap`` entries are on it
    already (adding one that is there is fine)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT present FROM bot_entries WHERE list = ? AND value = ?", (list_, value)
        ).fetchone()
        already = row is not None and bool(row["present"])
        if not already and _count(conn, list_, 1) >= cap:
            raise ListFull(f"{list_} holds {cap} entries already (max_list_entries)")
        _put(conn, list_, value, 1, at_ms, by)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def remove_entry(
    conn: sqlite3.Connection, list_: str, value: str, *, cap: int, at_ms: int, by: str
) -> None:
    """Record that ``value`` must not be on ``list_``; beyond ``cap`` tombstones the
    oldest are forgotten."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _put(conn, list_, value, 0, at_ms, by)
        extra = _count(conn, list_, 0) - cap
        if extra > 0:
            conn.execute(
                "DELETE FROM bot_entries WHERE rowid IN (SELECT rowid FROM bot_entries "
                "WHERE list = ? AND present = 0 ORDER BY changed_at_ms, rowid LIMIT ?)",
                (list_, extra),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
