"""The audit log: one row for every operator action, kept in the console database.

Rows are only ever inserted (never updated or deleted by the console): who acted (an
operator's username, the attempted username for a failed sign-in, or ``cli``), what they
did (a dotted action name such as ``product.create``), on what (``target``), when
(``at_ms``), from where (``ip``) and the details (a JSON object: the command sent, the
outcome).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at_ms: int
    operator: str
    action: str
    target: str
    details: dict[str, Any]
    ip: str


def record(
    conn: sqlite3.Connection,
    *,
    at_ms: int,
    operator: str,
    action: str,
    target: str = "",
    details: Mapping[str, Any] | None = None,
    ip: str = "",
) -> None:
    """Append one audit row."""
    conn.execute(
        "INSERT INTO audit (at_ms, operator, action, target, details, ip) VALUES (?,?,?,?,?,?)",
        (
            at_ms,
            operator,
            action,
            target,
            json.dumps(dict(details or {}), sort_keys=True, default=str),
            ip,
        ),
    )


def recent(conn: sqlite3.Connection, limit: int) -> list[AuditRow]:
    """The newest ``limit`` rows, newest first."""
    rows = conn.execute(
        "SELECT id, at_ms, operator, action, target, details, ip FROM audit "
        "ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        AuditRow(
            id=int(r["id"]),
            at_ms=int(r["at_ms"]),
            operator=str(r["operator"]),
            action=str(r["action"]),
            target=str(r["target"]),
            details=json.loads(r["details"]),
            ip=str(r["ip"]),
        )
        for r in rows
    ]
