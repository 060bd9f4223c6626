"""Raft membership from the console: the add/remove forms and the audited change.

Theory of operation: the cluster page shows, to operators with the ``operator`` right,
a form to add a configured node that is not a member and one to remove a member. A
change goes to the leader through ``ClusterClient.change_membership`` (the node's
``POST /v1/membership``), and every outcome, refusals included, is written to the audit
log before the operator sees it. CSRF is checked for every POST by the security
middleware, like every other console form. After an add, the operator starts the node
(``flashsale node ID``); after a remove, stops it and deletes it from cluster.toml.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from admin import audit
from admin.app_keys import CLOCK_MS, CLUSTER, STORE, session_of
from admin.limits import SUBMIT_DEADLINE_S
from admin.operators import RIGHT_OPERATOR
from admin.render import Markup, join, tag
from cluster.config import ClusterConfig, NodeConfig
from cluster.errors import ClusterError, CommitUnknown, MembershipRefused, NoLeader

log = logging.getLogger("admin.membership")

AUDIT_ACTIONS = {"add": "cluster.add-node", "remove": "cluster.remove-node"}


@dataclass(frozen=True, slots=True)
class Change:
    status: str  # changed | refused | unknown | unavailable
    message: str

    @property
    def http_status(self) -> int:
        return {"changed": 200, "refused": 409}.get(self.status, 503)


def may_change(request: web.Request) -> bool:
    return session_of(request).operator.may(RIGHT_OPERATOR)


def _form(csrf: str, action: str, label: str, node_ids: list[str]) -> Markup:
    return tag(
        "form",
        [
            tag("input", type="hidden", name="csrf_token", value=csrf),
            tag("input", type="hidden", name="action", value=action),
            tag(
                "label",
                [
                    label,
                    " ",
                    tag("select", [tag("option", n, value=n) for n in node_ids], name="node_id"),
                ],
            ),
            tag("button", label, type="submit"),
        ],
        method="post",
        action="/cluster/members",
        class_="membership",
        id=f"{action}-node",
    )


def membership_forms(
    request: web.Request, config: ClusterConfig, members: list[str] | None
) -> Markup:
    """The add/remove forms (operators only; nothing until a leader lists its members)."""
    if not may_change(request) or members is None:
        return Markup("")
    csrf = session_of(request).csrf_token
    joinable = [n.id for n in config.nodes if n.id not in members]
    parts = []
    if joinable:
        parts.append(_form(csrf, "add", "Add node", joinable))
    parts.append(_form(csrf, "remove", "Remove node", list(members)))
    note = tag(
        "p",
        "Add: the node must be in cluster.toml; start it afterwards (flashsale node ID). "
        "Remove: not the leader; stop the node afterwards and delete it from cluster.toml.",
        class_="note",
    )
    return join([tag("h3", "Membership"), *parts, note])


def forbidden(request: web.Request, action: str, node_id: str) -> web.HTTPForbidden:
    session = session_of(request)
    audit.record(
        request.app[STORE],
        at_ms=request.app[CLOCK_MS](),
        operator=session.operator.username,
        action="denied",
        target=node_id,
        details={"wanted": AUDIT_ACTIONS.get(action, action), "right": RIGHT_OPERATOR},
        ip=request.remote or "",
    )
    return web.HTTPForbidden(text="Your account lacks the right 'operator' to change members.")


async def change_audited(request: web.Request, action: str, node: NodeConfig) -> Change:
    """Ask the leader to add/remove ``node``; audit the outcome; never raises for the
    cluster's trouble."""
    try:
        answer = await request.app[CLUSTER].change_membership(
            action, node, deadline_s=SUBMIT_DEADLINE_S
        )
    except MembershipRefused as exc:
        change = Change("refused", f"Refused by the leader: {exc}")
    except CommitUnknown as exc:
        change = Change(
            "unknown",
            f"The leader did not confirm the change in time; it may or may not be done. "
            f"The node table shows the members. ({exc})",
        )
    except NoLeader as exc:
        change = Change("unavailable", f"No leader took the change, nothing changed: {exc}")
    except ClusterError as exc:
        change = Change("unavailable", f"The cluster refused the request: {exc}")
    else:
        ids = [str(m.get("id")) for m in answer.get("members", []) if isinstance(m, dict)]
        verb = "is now a member" if action == "add" else "is no longer a member"
        after = "start it" if action == "add" else "stop it and delete it from cluster.toml"
        change = Change("changed", f"{node.id} {verb} (members: {', '.join(ids)}); {after}.")
    log.info("membership change", extra={"action": action, "node": node.id, "outcome": change})
    session = session_of(request)
    audit.record(
        request.app[STORE],
        at_ms=request.app[CLOCK_MS](),
        operator=session.operator.username,
        action=AUDIT_ACTIONS[action],
        target=node.id,
        details={"outcome": change.status, "message": change.message},
        ip=request.remote or "",
    )
    return change
