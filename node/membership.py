"""Membership changes: add a node to the Raft cluster, or remove one, without a pause.

Theory of operation: pysyncobj changes membership one node at a time through a log
entry (``dynamicMembershipChange``). The leader switches to the new member set when it
appends the entry, every other member when it receives it, and a node that restarts
gets the set back from its journal or dump. A node is named by its Raft address.

``Membership.change`` runs on the leader only. It first checks the rules below against
the leader's view (``refusal``, a pure function), then queues the change with a
callback that hands pysyncobj's answer to the event loop (like a proposal), and waits
at most the commit timeout. Rules, so that the cluster keeps selling through the change:
- one change at a time (pysyncobj refuses a second one before the first commits);
- add: the node is not a member yet, and the live members (the leader and the partners
  it is connected to) are a majority of the new set, in which the newcomer counts as
  not live until it catches up. A 3-node cluster with a dead member therefore removes
  the dead one first (2 left), then adds its replacement (quorum 2 of 3 while it starts);
- remove: the node is a member other than the leader (pysyncobj cannot remove the
  leader: stop it, a new leader is elected, then remove it there), and the live members
  left are a majority of the set left. At least one member always remains.

Outcomes: ``Changed`` (committed), ``Refused`` (a rule or pysyncobj said no: nothing
changed), ``NotLeader``, ``Unknown`` (no answer in time: read /v1/status to see).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pysyncobj.config import FAIL_REASON

from cluster.config import NodeConfig
from node.proposals import NotLeader, Unknown

ACTIONS = ("add", "remove")


@dataclass(frozen=True, slots=True)
class Changed:
    action: str
    node: NodeConfig


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


Outcome = Changed | Refused | NotLeader | Unknown


class Member(Protocol):
    @property
    def raft(self) -> str: ...

    @property
    def connected(self) -> bool: ...


class MembershipRaft(Protocol):
    """What Membership needs from the Raft node (RaftNode implements it)."""

    def is_leader(self) -> bool: ...

    def leader(self) -> NodeConfig | None: ...

    def change_membership(self, action: str, raft: str, callback: Any) -> None: ...

    def learn_node(self, node: NodeConfig) -> None: ...


def _has_quorum(live: int, total: int) -> bool:
    return 2 * live > total


def refusal(action: str, target: str, leader: str, partners: Sequence[Member]) -> str | None:
    """Why the leader at Raft address ``leader`` must refuse ``action`` on the node at
    ``target``, given its partners; None when the change may go ahead."""
    connected = {p.raft: p.connected for p in partners}
    if action == "add":
        if target == leader or target in connected:
            return f"{target} is already a member"
        live, total = 1 + sum(connected.values()), len(connected) + 2
        if not _has_quorum(live, total):
            return (
                f"with {target} the cluster has {total} members and needs {total // 2 + 1} "
                f"live for a quorum, but only {live} are connected: remove a dead member first"
            )
        return None
    if action == "remove":
        if target == leader:
            return (
                f"{target} is the leader and cannot remove itself: stop it, "
                "then remove it from the new leader"
            )
        if target not in connected:
            return f"{target} is not a member"
        left = {raft: up for raft, up in connected.items() if raft != target}
        live, total = 1 + sum(left.values()), len(left) + 1
        if not _has_quorum(live, total):
            return (
                f"without {target} the {total} members left need {total // 2 + 1} live "
                f"for a quorum, but only {live} are connected"
            )
        return None
    return f"action {action!r}: expected one of {', '.join(ACTIONS)}"


class Membership:
    """Membership changes on the leader, one at a time; see the module docstring."""

    def __init__(self, raft: MembershipRaft, *, timeout_ms: int) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self._raft = raft
        self._timeout_s = timeout_ms / 1000
        self._lock = asyncio.Lock()

    async def change(
        self, action: str, node: NodeConfig, *, leader: str, partners: Sequence[Member]
    ) -> Outcome:
        """Add or remove ``node``; ``leader``/``partners``: the leader's current view."""
        if not self._raft.is_leader():
            return NotLeader(self._raft.leader())
        if self._lock.locked():
            return Refused("another membership change is in progress")
        async with self._lock:
            reason = refusal(action, str(node.raft), leader, partners)
            if reason is not None:
                return Refused(reason)
            self._raft.learn_node(node)
            loop = asyncio.get_running_loop()
            done: asyncio.Future[int] = loop.create_future()

            def settle(fail_reason: int) -> None:
                if not done.done():
                    done.set_result(fail_reason)

            def on_change(_result: Any, fail_reason: int) -> None:  # tick thread
                with contextlib.suppress(Exception):  # e.g. the loop closed at shutdown
                    loop.call_soon_threadsafe(settle, fail_reason)

            self._raft.change_membership(action, str(node.raft), on_change)
            try:
                async with asyncio.timeout(self._timeout_s):
                    fail_reason = await done
            except TimeoutError:
                return Unknown("timeout")
        if fail_reason == FAIL_REASON.SUCCESS:
            return Changed(action, node)
        if fail_reason in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER):
            return NotLeader(self._raft.leader())
        if fail_reason == FAIL_REASON.REQUEST_DENIED:
            return Refused(
                "Raft refused the change (the previous change or the new leader's first "
                "entry is not committed yet); retry in a moment"
            )
        if fail_reason == FAIL_REASON.QUEUE_FULL:
            return Refused("the Raft queue is full; retry in a moment")
        return Unknown(f"fail_reason_{fail_reason}")
