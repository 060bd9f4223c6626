"""An async client of the nodes' internal API that follows the Raft leader.

Theory of operation: only the leader accepts ``POST /v1/commands``. The client keeps the
node it believes leads (``_leader``) and sends there; without a belief it tries the
nodes of the config in turn. A follower answers 421 naming the leader: the client goes
there at once (a few immediate redirects, then with backoff, so two nodes that each
name the other cannot spin it). A node without a leader (503 no-leader), a refused
connection, a timeout or a commit the node could not confirm (503 commit-unknown) make
the client forget its belief, wait a short capped backoff and try again with the very
same command dicts, so the same idempotency keys: a retry of a command that did apply
returns the recorded result instead of applying it twice.

A node that is overloaded (503 ``overloaded``: its admission limit, node.admission, or
its proposal queue is full) refused before proposing: that says nothing about who leads.
The client keeps its belief and the same target and retries there after the node's
Retry-After (capped, within the deadline), with the usual doubling backoff.

When the deadline passes, the client raises ``CommitUnknown`` if any attempt may have
reached a leader (a timeout, a dropped connection, a 503 commit-unknown, a 5xx),
``Overloaded`` (a ``NoLeader``) if none can have and the last refusal was an overload,
and ``NoLeader`` otherwise. A 400 means the batch itself is wrong and raises
``InvalidCommand`` without retrying.

Membership changes (``change_membership``) go to the leader too; they are not retried
after the leader took them (a second add of a node that joined is refused, which would
hide that the first one worked): an unconfirmed change raises ``CommitUnknown``.

Reads (``get``) go to the leader by default (read-your-writes) and fall back to any
node that answers; an overloaded node is skipped for that read but stays the leader, and
when every node asked was overloaded the read raises ``Overloaded`` (try later).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from cluster.auth import internal_token
from cluster.config import ClusterConfig, NodeConfig
from cluster.errors import (
    COMMIT_UNKNOWN,
    OVERLOADED,
    ClusterError,
    CommitUnknown,
    InvalidCommand,
    MembershipRefused,
    NoLeader,
    NotFound,
    Overloaded,
    ProtocolError,
    Unauthorized,
    Unreachable,
)
from ledger.limits import MAX_COMMANDS_PER_ENTRY

log = logging.getLogger("cluster.client")

BACKOFF_FIRST_S = 0.02  # first pause between attempts
BACKOFF_MAX_S = 0.5  # pauses double up to this
RETRY_AFTER_MAX_S = 0.25  # a node's Retry-After (whole seconds) is honoured up to this:
# an election takes a fraction of a second, and the deadline is the caller's to spend
MIN_ATTEMPT_S = 0.05  # no attempt starts with less time left: it could only time out,
# and a timeout counts as "may have been applied"
MAX_IMMEDIATE_REDIRECTS = 3  # 421 hops followed without a pause
STATUS_TIMEOUT_S = 2.0  # a node that does not answer /v1/status by then counts as down
MAX_ERROR_DETAIL_CHARS = 300  # of a non-JSON error body, kept for the exception message


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What the leader answered: the ledger index of the entry and one result per command."""

    index: int
    results: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]
    retry_after_s: float | None


class _Backoff:
    """Doubling pauses with jitter, capped, never past the deadline."""

    def __init__(self) -> None:
        self._next_s = BACKOFF_FIRST_S

    async def sleep(self, deadline: float, at_least_s: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        pause_s = max(self._next_s * random.uniform(0.5, 1.0), min(at_least_s, RETRY_AFTER_MAX_S))
        self._next_s = min(self._next_s * 2, BACKOFF_MAX_S)
        await asyncio.sleep(max(0.0, min(pause_s, deadline - loop.time())))


class ClusterClient:
    """Client of the node internal API; see the module docstring for the retry rules."""

    def __init__(
        self,
        config: ClusterConfig,
        session: aiohttp.ClientSession | None = None,
        *,
        request_timeout_s: float = 6.0,
    ) -> None:
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s={request_timeout_s!r}: expected > 0")
        self.config = config
        self._session = session
        self._own_session = session is None
        self._request_timeout_s = request_timeout_s
        self._headers = {"Authorization": f"Bearer {internal_token(config.secret)}"}
        self._leader: NodeConfig | None = None
        self._next_index = 0  # round robin over nodes when no leader is known
        self._discovery: asyncio.Lock | None = None

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- writes ----------------------------------------------------------------------

    async def submit(
        self, commands: list[dict[str, Any]], *, deadline_s: float = 10.0
    ) -> SubmitResult:
        """Apply ``commands`` as one Raft entry on the leader; retry until ``deadline_s``.

        Raises InvalidCommand (400, no retry), Unauthorized, CommitUnknown or NoLeader.
        """
        if not 1 <= len(commands) <= MAX_COMMANDS_PER_ENTRY:
            raise ValueError(f"{len(commands)} commands: a batch holds 1..{MAX_COMMANDS_PER_ENTRY}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        body = json.dumps({"commands": commands}, separators=(",", ":")).encode()
        backoff = _Backoff()
        maybe_applied = False
        overloaded = False  # the last refusal was an overload (not a missing leader)
        redirects = 0
        last_problem = "no attempt fit in the deadline"
        target = self._leader or self._rotate()
        while (remaining_s := deadline - loop.time()) > MIN_ATTEMPT_S:
            timeout_s = min(self._request_timeout_s, remaining_s)
            overloaded = False
            try:
                answer = await self._request("POST", target, "/v1/commands", timeout_s, body=body)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Never connected: the commands cannot have reached this node.
                last_problem = f"{target.id}: {exc}"
                target = self._give_up_on(target)
                await backoff.sleep(deadline)
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                maybe_applied = True
                last_problem = f"{target.id}: {type(exc).__name__} {exc}".strip()
                target = self._give_up_on(target)
                await backoff.sleep(deadline)
                continue

            if answer.status == 200:
                self._leader = target
                return self._submit_result(answer, len(commands), target)
            detail = _detail(answer)
            last_problem = f"{target.id}: HTTP {answer.status}: {detail}"
            overloaded = answer.status == 503 and answer.body.get("type") == OVERLOADED
            if overloaded:
                # Refused before proposing, by a node that is busy, not leaderless: the
                # same node again after its Retry-After, leader belief kept.
                await backoff.sleep(deadline, answer.retry_after_s or 0.0)
            elif answer.status == 421:
                hint = self._leader_hint(answer.body)
                if hint is not None and hint != target:
                    self._leader = target = hint
                    redirects += 1
                    if redirects <= MAX_IMMEDIATE_REDIRECTS:
                        continue
                else:
                    target = self._give_up_on(target)
                await backoff.sleep(deadline, answer.retry_after_s or 0.0)
            elif answer.status == 503 and answer.body.get("type") == COMMIT_UNKNOWN:
                # Proposed but not confirmed: the same leader most likely knows soon.
                maybe_applied = True
                await backoff.sleep(deadline, answer.retry_after_s or 0.0)
            elif answer.status == 503:
                target = self._give_up_on(target)
                await backoff.sleep(deadline, answer.retry_after_s or 0.0)
            elif answer.status == 400:
                index = answer.body.get("command_index")
                raise InvalidCommand(detail, index if isinstance(index, int) else None)
            elif answer.status in (401, 403):
                raise Unauthorized(f"{target.id} refused the internal token: {detail}")
            elif answer.status in (413, 422):
                raise InvalidCommand(detail)
            elif 400 <= answer.status < 500:
                raise ProtocolError(last_problem)
            else:
                # A 500 may come after the node proposed the entry.
                maybe_applied = True
                target = self._give_up_on(target)
                await backoff.sleep(deadline)
            log.debug("submit retry", extra={"problem": last_problem})
        if maybe_applied:
            raise CommitUnknown(
                f"outcome unknown after {deadline_s:g}s (retry with the same keys); "
                f"last: {last_problem}"
            )
        if overloaded:
            raise Overloaded(
                f"the cluster was overloaded for {deadline_s:g}s, nothing applied; "
                f"last: {last_problem}"
            )
        raise NoLeader(
            f"no leader accepted the commands within {deadline_s:g}s; last: {last_problem}"
        )

    async def change_membership(
        self, action: str, node: NodeConfig, *, deadline_s: float = 15.0
    ) -> dict[str, Any]:
        """Ask the leader to ``add`` or ``remove`` ``node`` as a Raft member; the leader's
        answer ({"action", "node", "members"}). Raises MembershipRefused (409, nothing
        changed), NoLeader, CommitUnknown (the change may or may not be committed: look
        at the members in /v1/status) or Unauthorized."""
        if action not in ("add", "remove"):
            raise ValueError(f"action={action!r}: expected 'add' or 'remove'")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        payload = {
            "action": action,
            "node_id": node.id,
            "raft": str(node.raft),
            "api": str(node.api),
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        backoff = _Backoff()
        last_problem = "no attempt fit in the deadline"
        while (remaining_s := deadline - loop.time()) > MIN_ATTEMPT_S:
            target = await self.leader()
            if target is None:
                last_problem = "no leader known"
                await backoff.sleep(deadline)
                continue
            # The leader waits up to its commit timeout: give it the time that is left.
            try:
                answer = await self._request(
                    "POST", target, "/v1/membership", remaining_s, body=body
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                last_problem = f"{target.id}: {exc}"
                self._give_up_on(target)
                await backoff.sleep(deadline)
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise CommitUnknown(
                    f"{target.id}: {type(exc).__name__} {exc}; see the members in "
                    "`flashsale status`"
                ) from None
            detail = _detail(answer)
            if answer.status == 200:
                self._leader = target
                return answer.body
            if answer.status == 409:
                raise MembershipRefused(detail)
            if answer.status in (401, 403):
                raise Unauthorized(f"{target.id} refused the internal token: {detail}")
            if answer.status == 503 and answer.body.get("type") == COMMIT_UNKNOWN:
                raise CommitUnknown(detail)
            if answer.status == 400:
                raise ProtocolError(f"{target.id}: HTTP 400: {detail}")
            last_problem = f"{target.id}: HTTP {answer.status}: {detail}"
            hint = self._leader_hint(answer.body) if answer.status == 421 else None
            if hint is not None:
                self._leader = hint
            else:
                self._give_up_on(target)
            await backoff.sleep(deadline, answer.retry_after_s or 0.0)
        raise NoLeader(f"no leader took the change within {deadline_s:g}s; last: {last_problem}")

    # -- reads -----------------------------------------------------------------------

    async def leader(self) -> NodeConfig | None:
        """The node believed to lead; asks every node's /v1/status when unknown."""
        if self._leader is not None:
            return self._leader
        if self._discovery is None:
            self._discovery = asyncio.Lock()
        async with self._discovery:
            if self._leader is None:
                found = leader_id(await self.status_all())
                self._leader = None if found is None else self.config.node(found)
        return self._leader

    async def status_all(self) -> dict[str, dict[str, Any] | None]:
        """Node id -> its /v1/status, or None when it does not answer."""

        async def one(node: NodeConfig) -> dict[str, Any] | None:
            try:
                answer = await self._request("GET", node, "/v1/status", STATUS_TIMEOUT_S)
            except (TimeoutError, aiohttp.ClientError):
                return None
            if answer.status in (401, 403):
                raise Unauthorized(f"{node.id} refused the internal token: {_detail(answer)}")
            return answer.body if answer.status == 200 else None

        found = await asyncio.gather(*(one(n) for n in self.config.nodes))
        return {n.id: s for n, s in zip(self.config.nodes, found, strict=True)}

    async def get(
        self,
        path: str,
        *,
        prefer_leader: bool = True,
        params: Mapping[str, str | int] | None = None,
        node_id: str | None = None,
        timeout_s: float | None = None,
        leader_only: bool = False,
    ) -> dict[str, Any]:
        """GET ``path`` (like ``/v1/products``) from the leader, or any node that answers.

        ``node_id`` asks that one node only. ``leader_only`` asks the leader only, for
        reads that must see every acknowledged write (a follower that is catching up
        would answer 404 for a hold that exists): NoLeader when none is known. Raises
        NotFound on 404, Unreachable when no node answered.
        """
        if not path.startswith("/"):
            raise ValueError(f"path={path!r}: expected an absolute path like /v1/status")
        if node_id is not None:
            candidates = [self.config.node(node_id)]
        elif leader_only:
            leader = await self.leader()
            if leader is None:
                raise NoLeader(f"GET {path}: no leader known (election in progress?)")
            candidates = [leader]
        else:
            first = await self.leader() if prefer_leader else self._rotate()
            others = [n for n in self.config.nodes if n != first]
            candidates = ([first] if first is not None else []) + others
        problems: list[str] = []
        overloaded = 0
        for node in candidates:
            try:
                answer = await self._request(
                    "GET", node, path, timeout_s or self._request_timeout_s, params=params
                )
            except (TimeoutError, aiohttp.ClientError) as exc:
                problems.append(f"{node.id}: {type(exc).__name__} {exc}".strip())
                if node == self._leader:
                    self._leader = None
                continue
            if answer.status == 200:
                return answer.body
            if answer.status == 404:
                raise NotFound(_detail(answer))
            if answer.status in (401, 403):
                raise Unauthorized(f"{node.id} refused the internal token: {_detail(answer)}")
            if 400 <= answer.status < 500:
                raise ClusterError(f"GET {path}: HTTP {answer.status}: {_detail(answer)}")
            if answer.status == 503 and answer.body.get("type") == OVERLOADED:
                overloaded += 1  # busy, not gone: the leader belief stays
            problems.append(f"{node.id}: HTTP {answer.status}: {_detail(answer)}")
        if candidates and overloaded == len(candidates):
            raise Overloaded(f"GET {path}: every node asked is overloaded ({'; '.join(problems)})")
        raise Unreachable(f"GET {path}: no node answered ({'; '.join(problems)})")

    # -- plumbing --------------------------------------------------------------------

    def _rotate(self) -> NodeConfig:
        node = self.config.nodes[self._next_index % len(self.config.nodes)]
        self._next_index += 1
        return node

    def _give_up_on(self, node: NodeConfig) -> NodeConfig:
        """Forget ``node`` as leader; the node to try next (the one after it)."""
        if self._leader == node:
            self._leader = None
        nodes = self.config.nodes
        self._next_index = (nodes.index(node) + 1) % len(nodes) if node in nodes else 0
        return self._rotate()

    def _leader_hint(self, body: Mapping[str, Any]) -> NodeConfig | None:
        hint = body.get("leader")
        if not isinstance(hint, dict):
            return None
        for node in self.config.nodes:
            if node.id == hint.get("id") or str(node.api) == hint.get("api"):
                return node
        return None

    def _submit_result(self, answer: _Answer, n_commands: int, node: NodeConfig) -> SubmitResult:
        index, results = answer.body.get("index"), answer.body.get("results")
        if not isinstance(index, int) or not isinstance(results, list):
            raise ProtocolError(f"{node.id}: 200 without index/results: {answer.body!r:.200}")
        if len(results) != n_commands:
            raise ProtocolError(f"{node.id}: {len(results)} results for {n_commands} commands")
        return SubmitResult(index=index, results=results)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def _request(
        self,
        method: str,
        node: NodeConfig,
        path: str,
        timeout_s: float,
        *,
        body: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> _Answer:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        async with self._http().request(
            method,
            node.api.url + path,
            data=body,
            params=params,
            headers=headers,
            # The connect phase times out first (ConnectionTimeoutError), so a request that
            # never reached the node is told apart from one whose answer was lost.
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout_s * 0.9),
        ) as resp:
            raw = await resp.read()
            return _Answer(resp.status, _json_object(raw), _retry_after_s(resp.headers))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"detail": raw[:MAX_ERROR_DETAIL_CHARS].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"detail": repr(value)[:MAX_ERROR_DETAIL_CHARS]}


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: our nodes never send one


def _detail(answer: _Answer) -> str:
    body = answer.body
    return str(body.get("detail") or body.get("title") or body.get("type") or "no detail")


def leader_id(statuses: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The id of the node that says it leads (node id -> /v1/status, None when down).

    With two claimants (an old leader cut off from the rest), the later term wins.
    """
    best: tuple[int, str] | None = None
    for node_id, status in statuses.items():
        if status is None or status.get("role") != "leader":
            continue
        term = status.get("term")
        term_n = term if isinstance(term, int) else -1
        if best is None or term_n > best[0]:
            best = (term_n, node_id)
    return None if best is None else best[1]
