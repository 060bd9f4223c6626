"""Admission limits of a node's internal API: at most so many requests of a kind at once.

Theory of operation: every request to the internal API is of one kind (``kind_of``):
``submit`` (``POST /v1/commands``: a batch body of up to 4 MB to decode, then a Raft
commit to wait for), ``read`` (a product, hold, cart or order: the ledger's read lock),
``feed`` (``GET /v1/feed``: a long-poll held open up to 30 s) or none (health, metrics,
status, membership: cheap or rare, and what operators and leader discovery need while
the node is busy). ``Admission`` counts the requests of each kind being handled; one
more than its limit is refused at once (the API answers 503 ``overloaded`` with
Retry-After, before reading the body), so a flood costs the node a counter check rather
than memory and CPU it does not have. Each kind has its own limit so that long-polls
cannot take the slots of submits, nor reads those of either.

A refusal means "not proposed, try later": callers (cluster.client) back off and retry
on the same node; it is never a sign of a leader change. The limits come from [raft]
in cluster.toml (``max_concurrent_submits``, ``max_concurrent_reads``,
``max_feed_long_polls``). Behind the submit limit, proposals awaiting their commit are
capped again (node.proposals.MAX_IN_FLIGHT_PROPOSALS) and so is pysyncobj's queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.config import RaftConfig

Kind = Literal["submit", "read", "feed"]
KINDS: tuple[Kind, ...] = ("submit", "read", "feed")
RETRY_AFTER_S = 1  # what a refusal asks the caller to wait (whole seconds, as HTTP says)
_READ_PREFIXES = ("/v1/products", "/v1/holds/", "/v1/carts/", "/v1/orders")


def kind_of(method: str, path: str) -> Kind | None:
    """The admission kind of a request; None for requests that are never refused."""
    if method == "POST" and path == "/v1/commands":
        return "submit"
    if method == "GET" and path == "/v1/feed":
        return "feed"
    if method == "GET" and path.startswith(_READ_PREFIXES):
        return "read"
    return None


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Requests of each kind handled at once."""

    submits: int = 128
    reads: int = 256
    feed_long_polls: int = 256

    def __post_init__(self) -> None:
        for name in ("submits", "reads", "feed_long_polls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")

    @classmethod
    def from_config(cls, raft: RaftConfig) -> AdmissionLimits:
        return cls(raft.max_concurrent_submits, raft.max_concurrent_reads, raft.max_feed_long_polls)

    def limit(self, kind: Kind) -> int:
        if kind == "submit":
            return self.submits
        if kind == "read":
            return self.reads
        return self.feed_long_polls


class Admission:
    """The counts of requests being handled, per kind, against ``limits``.

    Used from the event loop only (no locking): ``try_enter`` and ``leave`` pair up
    around a request's handling.
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._in_flight: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._refused: dict[Kind, int] = dict.fromkeys(KINDS, 0)

    def try_enter(self, kind: Kind) -> bool:
        """Count one more request of ``kind``; False (and counted as refused) when full."""
        if self._in_flight[kind] >= self.limits.limit(kind):
            self._refused[kind] += 1
            return False
        self._in_flight[kind] += 1
        return True

    def leave(self, kind: Kind) -> None:
        """One request of ``kind`` is done."""
        if self._in_flight[kind] <= 0:
            raise RuntimeError(f"leave({kind!r}) without a matching try_enter")
        self._in_flight[kind] -= 1

    def in_flight(self, kind: Kind) -> int:
        return self._in_flight[kind]

    def refused(self, kind: Kind) -> int:
        return self._refused[kind]
