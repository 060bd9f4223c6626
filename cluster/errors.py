"""Failures a caller of the node internal API can see, as exceptions of one family.

``ClusterClient`` turns HTTP answers and network failures into these; the gateway maps
them to problem+json, the CLI to one line on stderr. The problem ``type`` URIs the
nodes send for each cause are kept here too, so both sides of the internal API name
them the same way.
"""

from __future__ import annotations

PROBLEM_BASE = "https://flashsale.dev/problems/"
NOT_LEADER = PROBLEM_BASE + "not-leader"
NO_LEADER = PROBLEM_BASE + "no-leader"
COMMIT_UNKNOWN = PROBLEM_BASE + "commit-unknown"
INVALID_COMMAND = PROBLEM_BASE + "invalid-command"
NOT_FOUND = PROBLEM_BASE + "not-found"
UNAUTHORIZED = PROBLEM_BASE + "unauthorized"
MEMBERSHIP_REFUSED = PROBLEM_BASE + "membership-refused"
OVERLOADED = PROBLEM_BASE + "overloaded"  # refused before any work: try later, same node


class ClusterError(Exception):
    """Base class: the cluster could not do what was asked."""


class NoLeader(ClusterError):
    """No node accepted the commands before the deadline, and none may have applied
    them: it is safe to report failure (or retry later with the same keys)."""


class Overloaded(NoLeader):
    """Every node asked refused the request as overloaded (503 ``overloaded``) until the
    deadline. Nothing was applied (a NoLeader in that respect): retry later, with the
    same idempotency keys; the leader has not changed."""


class CommitUnknown(ClusterError):
    """The commands may or may not have been applied. Retry with the SAME idempotency
    keys to learn the outcome; never report success or failure on a guess."""


class InvalidCommand(ClusterError):
    """A node refused to decode the batch (HTTP 400). Retrying cannot help."""

    def __init__(self, detail: str, command_index: int | None = None) -> None:
        super().__init__(detail if command_index is None else f"command {command_index}: {detail}")
        self.detail = detail
        self.command_index = command_index


class NotFound(ClusterError):
    """The thing asked for (product, hold, cart, order) does not exist (HTTP 404)."""


class Unauthorized(ClusterError):
    """A node refused the internal token: this config's cluster.secret is not the
    cluster's (HTTP 401/403)."""


class Unreachable(ClusterError):
    """No node of the config answered a read."""


class ProtocolError(ClusterError):
    """A node answered something the internal API does not allow (a bug or a
    different program listening on the port)."""


class MembershipRefused(ClusterError):
    """The leader refused a membership change (HTTP 409): already a member, not a member,
    the leader itself, another change in progress, or it would cost the quorum."""
