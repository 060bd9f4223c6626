"""An operator's change to the sale: one ledger command through the Raft leader, audited.

Theory of operation: ``submit_audited`` sends one command (carrying the idempotency key
minted with the form) through ``ClusterClient.submit``, which retries on leader changes
with the same key. The outcome is one of: ``applied`` (the ledger's result), ``rejected``
(the ledger refused it: the reason and message), ``unknown`` (the deadline passed after
the command may have reached a leader: submitting the same form again, same key, finds
out) or ``unavailable`` (no leader took it: nothing happened). Every outcome is written to
the audit log with the command, before the operator sees it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from admin import audit
from admin.app_keys import CLOCK_MS, CLUSTER, METRICS, STORE, session_of
from admin.limits import SUBMIT_DEADLINE_S
from cluster.errors import ClusterError, CommitUnknown, NoLeader

log = logging.getLogger("admin.writes")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # applied | rejected | unknown | unavailable
    result: dict[str, Any] | None
    message: str

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    @property
    def keep_key(self) -> bool:
        """Whether a resubmission should reuse the key: only while the outcome is open."""
        return self.status in ("unknown", "unavailable")


def describe_rejection(result: dict[str, Any]) -> str:
    reason = str(result.get("reason", "rejected"))
    text = str(result.get("message", "")).strip()
    return f"refused by the ledger ({reason}){': ' + text if text else ''}"


async def submit_audited(
    request: web.Request, action: str, target: str, command: dict[str, Any]
) -> Outcome:
    """Submit ``command``; audit and count the outcome; never raises for cluster trouble."""
    session = session_of(request)
    cluster = request.app[CLUSTER]
    try:
        answer = await cluster.submit([command], deadline_s=SUBMIT_DEADLINE_S)
    except CommitUnknown as exc:
        outcome = Outcome(
            "unknown",
            None,
            "The cluster did not confirm this change in time; it may or may not have been "
            "applied. Submit the same form again to find out (it will not apply twice).",
        )
        log.warning("operator write unknown", extra={"action": action, "error": str(exc)})
    except NoLeader as exc:
        outcome = Outcome(
            "unavailable", None, f"No leader accepted the change, nothing was applied: {exc}"
        )
    except ClusterError as exc:
        outcome = Outcome("unavailable", None, f"The cluster refused the request: {exc}")
    else:
        result = answer.results[0]
        if result.get("ok") is False or result.get("type") == "rejected":
            outcome = Outcome("rejected", result, describe_rejection(result))
        else:
            outcome = Outcome("applied", result, "")
    audit.record(
        request.app[STORE],
        at_ms=request.app[CLOCK_MS](),
        operator=session.operator.username,
        action=action,
        target=target,
        details={"command": command, "outcome": outcome.status, "result": outcome.result},
        ip=request.remote or "",
    )
    request.app[METRICS].writes.labels(action, outcome.status).inc()
    return outcome
