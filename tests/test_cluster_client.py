"""ClusterClient routing, against real aiohttp servers that answer like nodes do.

Each fake node speaks the internal API's contract (status codes, problem types, leader
hints) with behaviour a test scripts per request; the client under test talks real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cluster.auth import check_bearer
from cluster.client import ClusterClient
from cluster.config import ClusterConfig, build_config
from cluster.errors import (
    COMMIT_UNKNOWN,
    INVALID_COMMAND,
    NO_LEADER,
    NOT_LEADER,
    OVERLOADED,
    CommitUnknown,
    InvalidCommand,
    NoLeader,
    NotFound,
    Overloaded,
    Unauthorized,
    Unreachable,
)
from tests.support.cluster import free_ports

SECRET = "test-secret-for-the-client-routing-tests"
PROBLEM = "application/problem+json"

Behaviour = Callable[["FakeNode", list[dict[str, Any]]], web.Response]


def ok(node: FakeNode, commands: list[dict[str, Any]]) -> web.Response:
    """A leader that applies: the same key always gives the same recorded result."""
    results = []
    for c in commands:
        if c["key"] not in node.applied:
            node.index += 1
            node.applied[c["key"]] = {"type": "restocked", "ok": True, "seen_at": node.index}
        results.append(node.applied[c["key"]])
    return web.json_response({"index": node.index, "results": results})


def not_leader(leader: FakeNode | None) -> Behaviour:
    def answer(node: FakeNode, commands: list[dict[str, Any]]) -> web.Response:
        if leader is None:
            body = {"type": NO_LEADER, "title": "no leader", "status": 503, "leader": None}
            return web.json_response(
                body, status=503, content_type=PROBLEM, headers={"Retry-After": "1"}
            )
        hint = {"id": leader.id, "api": f"127.0.0.1:{leader.port}"}
        body = {"type": NOT_LEADER, "title": "not the leader", "status": 421, "leader": hint}
        return web.json_response(body, status=421, content_type=PROBLEM)

    return answer


def commit_unknown(node: FakeNode, commands: list[dict[str, Any]]) -> web.Response:
    body = {"type": COMMIT_UNKNOWN, "title": "commit not confirmed", "status": 503}
    return web.json_response(body, status=503, content_type=PROBLEM)


def invalid(node: FakeNode, commands: list[dict[str, Any]]) -> web.Response:
    body = {
        "type": INVALID_COMMAND,
        "title": "invalid command",
        "status": 400,
        "detail": "quantity: expected an integer",
        "command_index": 1,
    }
    return web.json_response(body, status=400, content_type=PROBLEM)


@dataclass
class FakeNode:
    id: str
    role: str = "follower"
    term: int = 1
    port: int = 0
    script: list[Behaviour] = field(default_factory=list)  # consumed one per POST
    then: Behaviour = ok  # once the script is used up
    delay_s: float = 0.0
    bodies: list[list[dict[str, Any]]] = field(default_factory=list)
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    index: int = 0
    runner: web.AppRunner | None = None

    async def commands(self, request: web.Request) -> web.Response:
        if not check_bearer(request.headers.get("Authorization"), SECRET):
            return web.json_response({"type": "x", "status": 401}, status=401)
        commands = (await request.json())["commands"]
        self.bodies.append(commands)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        behaviour = self.script.pop(0) if self.script else self.then
        return behaviour(self, commands)

    async def status(self, request: web.Request) -> web.Response:
        if not check_bearer(request.headers.get("Authorization"), SECRET):
            return web.json_response({"type": "x", "status": 401}, status=401)
        return web.json_response({"id": self.id, "role": self.role, "term": self.term})

    async def product(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        if pid != "p1":
            return web.json_response(
                {
                    "type": "https://flashsale.dev/problems/not-found",
                    "status": 404,
                    "detail": f"no product {pid!r}",
                },
                status=404,
                content_type=PROBLEM,
            )
        return web.json_response(
            {"index": self.index, "product": {"product_id": pid}, "served_by": self.id}
        )


async def start(node: FakeNode) -> None:
    app = web.Application()
    app.router.add_post("/v1/commands", node.commands)
    app.router.add_get("/v1/status", node.status)
    app.router.add_get("/v1/products/{pid}", node.product)
    node.runner = web.AppRunner(app)
    await node.runner.setup()
    site = web.TCPSite(node.runner, "127.0.0.1", 0)
    await site.start()
    node.port = node.runner.addresses[0][1]


def config_for(
    ports: dict[str, int], secret: str = SECRET, spare: list[int] | None = None
) -> ClusterConfig:
    """A config whose nodes' APIs are ``ports``; Raft and console ports from ``spare``
    (len(ports) + 1 of them, chosen together so that none is handed out twice)."""
    spare = spare if spare is not None else free_ports(len(ports) + 1)
    data = {
        "cluster": {"secret": secret},
        "nodes": [
            {"id": nid, "raft": f"127.0.0.1:{raft}", "api": f"127.0.0.1:{port}"}
            for (nid, port), raft in zip(ports.items(), spare, strict=False)
        ],
        "admin": {"listen": f"127.0.0.1:{spare[len(ports)]}"},
    }
    return build_config(data, Path("/tmp"))


@dataclass
class Cluster:
    nodes: dict[str, FakeNode]
    config: ClusterConfig
    client: ClusterClient


@pytest.fixture
async def make_cluster() -> AsyncIterator[Callable[..., Any]]:
    started: list[FakeNode] = []
    clients: list[ClusterClient] = []

    async def make(
        *nodes: FakeNode,
        dead: tuple[str, ...] = (),
        secret: str = SECRET,
        request_timeout_s: float = 6.0,
    ) -> Cluster:
        for n in nodes:
            await start(n)
            started.append(n)
        ports = {n.id: n.port for n in nodes}
        # Every port these need chosen at once: chosen one by one (each socket closed
        # before the next is bound), the kernel could hand the same one out twice.
        spare = free_ports(len(dead) + len(ports) + len(dead) + 1)
        ports.update(zip(dead, spare, strict=False))  # nothing listens there
        order = {nid: ports[nid] for nid in sorted(ports)}
        config = config_for(order, secret, spare[len(dead) :])
        client = ClusterClient(config, request_timeout_s=request_timeout_s)
        clients.append(client)
        return Cluster({n.id: n for n in nodes}, config, client)

    yield make
    for c in clients:
        await c.close()
    for n in started:
        if n.runner is not None:
            await n.runner.cleanup()


def restock(key: str) -> dict[str, Any]:
    return {"type": "restock", "key": key, "product_id": "p1", "quantity": 1}


async def test_follower_redirects_to_the_leader_and_the_leader_is_remembered(
    make_cluster: Callable[..., Any],
) -> None:
    n2 = FakeNode("n2", role="leader")
    n1 = FakeNode("n1")
    n1.then = not_leader(n2)
    c: Cluster = await make_cluster(n1, n2)

    first = await c.client.submit([restock("k1")])
    assert first.index == 1 and first.results[0]["ok"] is True
    assert len(n1.bodies) == 1 and len(n2.bodies) == 1
    await c.client.submit([restock("k2")])
    assert len(n1.bodies) == 1, "the second submit went straight to the known leader"
    assert (await c.client.leader()) == c.config.node("n2")


async def test_no_leader_is_retried_until_one_is_elected(make_cluster: Callable[..., Any]) -> None:
    n1, n2 = FakeNode("n1"), FakeNode("n2")
    n1.script = [not_leader(None)] * 3
    n1.then = ok  # elected after three refusals
    n2.then = not_leader(None)
    c: Cluster = await make_cluster(n1, n2)

    result = await c.client.submit([restock("k1")], deadline_s=10)
    assert result.results[0]["ok"] is True
    assert len(n1.applied) == 1


async def test_commit_unknown_is_retried_with_the_same_keys_and_applied_once(
    make_cluster: Callable[..., Any],
) -> None:
    n1 = FakeNode("n1", role="leader")

    # The first attempt applies but the node cannot confirm it in time.
    def applied_but_unconfirmed(node: FakeNode, cmds: list[dict[str, Any]]) -> web.Response:
        ok(node, cmds)
        return commit_unknown(node, cmds)

    n1.script = [applied_but_unconfirmed]
    c: Cluster = await make_cluster(n1)

    result = await c.client.submit([restock("k1"), restock("k2")])
    assert n1.bodies[0] == n1.bodies[1], "the retry carries the same commands and keys"
    assert n1.index == 2, "each command applied once"
    assert [r["seen_at"] for r in result.results] == [1, 2]


async def test_deadline_without_any_leader_raises_no_leader(
    make_cluster: Callable[..., Any],
) -> None:
    n1, n2 = FakeNode("n1"), FakeNode("n2")
    n1.then = n2.then = not_leader(None)
    c: Cluster = await make_cluster(n1, n2, dead=("n3",))

    with pytest.raises(NoLeader):
        await c.client.submit([restock("k1")], deadline_s=0.6)
    assert n1.bodies and n2.bodies, "both live nodes were asked"


async def test_deadline_after_an_unconfirmed_commit_raises_commit_unknown(
    make_cluster: Callable[..., Any],
) -> None:
    n1 = FakeNode("n1", role="leader", then=commit_unknown)
    c: Cluster = await make_cluster(n1)

    with pytest.raises(CommitUnknown):
        await c.client.submit([restock("k1")], deadline_s=0.5)


async def test_a_timed_out_request_makes_the_outcome_unknown(
    make_cluster: Callable[..., Any],
) -> None:
    n1 = FakeNode("n1", role="leader", delay_s=1.5)
    c: Cluster = await make_cluster(n1, request_timeout_s=0.2)

    with pytest.raises(CommitUnknown):
        await c.client.submit([restock("k1")], deadline_s=0.7)


async def test_a_down_node_is_skipped(make_cluster: Callable[..., Any]) -> None:
    n2 = FakeNode("n2", role="leader")
    c: Cluster = await make_cluster(n2, dead=("n1",))  # n1 is tried first: refused

    result = await c.client.submit([restock("k1")])
    assert result.results[0]["ok"] is True
    status = await c.client.status_all()
    assert status["n1"] is None and status["n2"] is not None


async def test_invalid_command_is_not_retried(make_cluster: Callable[..., Any]) -> None:
    n1 = FakeNode("n1", role="leader", then=invalid)
    c: Cluster = await make_cluster(n1)

    with pytest.raises(InvalidCommand) as err:
        await c.client.submit([restock("k1"), {"type": "restock"}])
    assert err.value.command_index == 1
    assert "quantity" in str(err.value)
    assert len(n1.bodies) == 1


async def test_a_wrong_secret_is_reported_not_retried(make_cluster: Callable[..., Any]) -> None:
    n1 = FakeNode("n1", role="leader")
    c: Cluster = await make_cluster(n1, secret="another-secret")

    with pytest.raises(Unauthorized):
        await c.client.submit([restock("k1")])
    with pytest.raises(Unauthorized):
        await c.client.status_all()


async def test_leader_discovery_prefers_the_highest_term(make_cluster: Callable[..., Any]) -> None:
    stale = FakeNode("n1", role="leader", term=3)  # partitioned old leader
    fresh = FakeNode("n2", role="leader", term=4)
    c: Cluster = await make_cluster(stale, fresh, FakeNode("n3", term=4))

    assert (await c.client.leader()) == c.config.node("n2")


async def test_reads_prefer_the_leader_and_fall_back(make_cluster: Callable[..., Any]) -> None:
    n1, n2 = FakeNode("n1"), FakeNode("n2", role="leader")
    c: Cluster = await make_cluster(n1, n2)

    assert (await c.client.get("/v1/products/p1"))["served_by"] == "n2"
    with pytest.raises(NotFound, match="nope"):
        await c.client.get("/v1/products/nope")
    assert n2.runner is not None
    await n2.runner.cleanup()
    n2.runner = None
    assert (await c.client.get("/v1/products/p1"))["served_by"] == "n1"
    assert (await c.client.get("/v1/products/p1", node_id="n1"))["served_by"] == "n1"


async def test_leader_only_reads_never_fall_back_to_a_follower(
    make_cluster: Callable[..., Any],
) -> None:
    # A follower still catching up would deny a hold the shopper was just given.
    n1, n2 = FakeNode("n1"), FakeNode("n2", role="leader")
    c: Cluster = await make_cluster(n1, n2)

    assert (await c.client.get("/v1/products/p1", leader_only=True))["served_by"] == "n2"
    assert n2.runner is not None
    await n2.runner.cleanup()
    n2.runner = None
    with pytest.raises((Unreachable, NoLeader)):
        await c.client.get("/v1/products/p1", leader_only=True)
    with pytest.raises(NoLeader):  # the leader is gone and n1 knows none
        await c.client.get("/v1/products/p1", leader_only=True)


async def test_reads_with_every_node_down_raise_unreachable(
    make_cluster: Callable[..., Any],
) -> None:
    c: Cluster = await make_cluster(dead=("n1", "n2"))

    with pytest.raises(Unreachable):
        await c.client.get("/v1/products", prefer_leader=False)
    assert (await c.client.leader()) is None


async def test_batch_size_is_bounded(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(FakeNode("n1", role="leader"))
    from ledger.limits import MAX_COMMANDS_PER_ENTRY

    with pytest.raises(ValueError, match=r"1\.\.2000"):
        await c.client.submit([])
    with pytest.raises(ValueError):
        await c.client.submit([restock(f"k{i}") for i in range(MAX_COMMANDS_PER_ENTRY + 1)])


def overloaded(node: FakeNode, commands: list[dict[str, Any]]) -> web.Response:
    """What a node answers past its admission limit (node.admission): nothing proposed."""
    body = {"type": OVERLOADED, "title": "Overloaded", "status": 503}
    return web.json_response(body, status=503, content_type=PROBLEM, headers={"Retry-After": "1"})


async def test_an_overloaded_leader_is_asked_again_not_failed_over(
    make_cluster: Callable[..., Any],
) -> None:
    n1, n2 = FakeNode("n1", role="leader"), FakeNode("n2")
    n1.script = [ok, overloaded, overloaded]  # the first submit teaches the client n1 leads
    n2.then = not_leader(n1)
    c: Cluster = await make_cluster(n1, n2)
    await c.client.submit([restock("k0")])

    result = await c.client.submit([restock("k1")], deadline_s=10)
    assert result.results[0]["ok"] is True
    assert len(n1.bodies) == 4, "asked again, on the same node, until it took the batch"
    assert n2.bodies == [], "an overload is not a leader change: no other node was tried"
    assert (await c.client.leader()) == c.config.node("n1")


async def test_an_overload_past_the_deadline_raises_overloaded(
    make_cluster: Callable[..., Any],
) -> None:
    n1 = FakeNode("n1", role="leader")
    n1.then = overloaded
    c: Cluster = await make_cluster(n1)

    with pytest.raises(Overloaded):  # a NoLeader: nothing was applied
        await c.client.submit([restock("k1")], deadline_s=0.6)
    assert len(n1.bodies) >= 2, "backed off and retried within the deadline"
