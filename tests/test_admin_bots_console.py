"""The Bots and queue page over HTTP: the console (aiohttp test client, real ledger in
process) against two gateways that speak the internal bots API of docs/BOTS.md.

The gateways here are a test double of that documented interface (the real gateway is
driven end to end in tests/test_admin_bots_browser.py): real HTTP on loopback, bearer
check, the contract's bounds and document shape, and a restart that loses every change,
like a gateway without Redis.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import CookieJar, web
from aiohttp.test_utils import TestClient, TestServer, unused_port

from admin import audit
from admin.app_keys import BOTS
from admin.limits import BOTS_WRITE_TIMEOUT_MS
from admin.operators import create_operator
from admin.server import create_app
from admin.store import open_store
from cluster.auth import check_bearer
from cluster.config import ClusterConfig, build_config
from tests.test_admin_console import PASSWORD, Console, FakeClock, LedgerCluster

SECRET = "test-secret"
LISTS = ("block_ips", "allow_ips", "block_shoppers", "allow_shoppers")
BOUNDS = {"challenge_difficulty": (int, 1000, 10_000_000), "admission_rate": (float, 0.1, 1e5),
          "block_score": (int, 1, 1000)}  # fmt: skip
CAP = 3  # [bots] max_list_entries of this test's config


def problem(status: int, detail: str) -> web.Response:
    body = {"type": "https://flashsale.dev/problems/x", "title": "no", "status": status,
            "detail": detail}  # fmt: skip
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/problem+json")  # fmt: skip


@dataclass
class BotsGateway:
    """One gateway's internal bots API, in memory (its state is lost on restart)."""

    gid: str
    port: int
    settings: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    stall_writes_s: float = 0.0  # a gateway that takes this long to answer a change

    def reset(self) -> None:
        self.settings = {"challenge_difficulty": 50_000, "admission_rate": 50.0,
                         "block_score": 100}  # fmt: skip
        self.lists = {n: [] for n in LISTS}

    def document(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "defences": {"rate_limits": True, "challenge": True, "heuristics": True,
                         "waiting_room": True},
            "settings": dict(self.settings),
            "lists": {n: list(v) for n, v in self.lists.items()},
            "counts": {"allowed": 40, "limited": 5, "challenged": 3, "blocked": 2, "queued": 1,
                       "by_reason": {"limited/ip-rate": 5, "challenged/challenge-missing": 3,
                                     "blocked/block-list": 2, "queued/admission-missing": 1}},
            "queue": {"issued": 12, "admitted": 10, "waiting": 2, "opens_at": None,
                      "admission_rate": self.settings["admission_rate"]},
            "redis": {"configured": False, "ok": False},
        }  # fmt: skip

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if not check_bearer(request.headers.get("Authorization"), SECRET):
            return problem(401, "internal token needed")
        if request.method == "GET":
            return web.json_response(self.document())
        await asyncio.sleep(self.stall_writes_s)
        body = await request.json()
        if request.path.endswith("/settings"):
            for name, value in body.items():
                kind, lo, hi = BOUNDS[name]
                if not isinstance(value, int | float) or not lo <= value <= hi:
                    return problem(400, f"{name}: out of bounds")
                self.settings[name] = kind(value)
            return web.json_response(self.document())
        name, op, value = body["list"], body["op"], body["value"]
        if name.endswith("_ips"):
            net = ipaddress.ip_network(value, strict=False)
            value = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        entries = self.lists[name]
        if op == "add" and value not in entries:
            if len(entries) >= CAP:
                return problem(400, f"{name} is full")
            entries.append(value)
        elif op == "remove" and value in entries:
            entries.remove(value)
        return web.json_response(self.document())

    async def start(self) -> None:
        """Start (or restart: a fresh process with cluster.toml's numbers, empty lists)."""
        self.reset()
        app = web.Application()
        app.router.add_get("/internal/bots", self.handle)
        app.router.add_put("/internal/bots/settings", self.handle)
        app.router.add_post("/internal/bots/lists", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def make_config(tmp_path: Path, gateways: list[BotsGateway]) -> ClusterConfig:
    return build_config(
        {
            "cluster": {"data_dir": str(tmp_path), "secret": SECRET, "name": "testcl"},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:17001", "api": "127.0.0.1:17101"}],
            "gateways": [{"id": g.gid, "listen": f"127.0.0.1:{g.port}"} for g in gateways],
            "bots": {"max_list_entries": CAP},
        },
        tmp_path,
    )


@dataclass
class Setup:
    console: Console
    g1: BotsGateway
    g2: BotsGateway

    @property
    def gateways(self) -> list[BotsGateway]:
        return [self.g1, self.g2]

    async def poll(self) -> dict[str, Any]:
        snap: dict[str, Any] = await self.console.client.app[BOTS].poll_once()
        return snap


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    g1, g2 = BotsGateway("g1", unused_port()), BotsGateway("g2", unused_port())
    await g1.start()
    await g2.start()
    cfg = make_config(tmp_path, [g1, g2])
    db = tmp_path / "admin.db"
    conn = open_store(db)
    create_operator(conn, "alice", PASSWORD, ["operator"], at_ms=0, created_by="test")
    create_operator(conn, "viewer", PASSWORD, [], at_ms=0, created_by="test")
    conn.close()
    clock = FakeClock()
    app = create_app(cfg, cluster=LedgerCluster(clock), clock_ms=clock, db_path=db)
    client: TestClient[Any, Any] = TestClient(TestServer(app), cookie_jar=CookieJar(unsafe=True))
    await client.start_server()
    try:
        yield Setup(Console(client, LedgerCluster(clock), clock, db, cfg), g1, g2)
    finally:
        await client.close()
        await g1.stop()
        await g2.stop()


async def sign_in(s: Setup, username: str = "alice") -> None:
    assert (await s.console.login(username)).status == 303


async def csrf_of_bots_page(s: Setup) -> tuple[str, str]:
    html = await (await s.console.client.get("/bots")).text()
    m = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert m is not None
    return m.group(1), html


async def post(s: Setup, path: str, data: dict[str, str], *, csrf: bool = True) -> Any:
    if csrf:
        data = {**data, "csrf_token": (await csrf_of_bots_page(s))[0]}
    return await s.console.client.post(path, data=data, allow_redirects=False)


def actions(s: Setup) -> list[tuple[str, str, str]]:
    return s.console.audit_actions()


def details_of(s: Setup, action: str) -> dict[str, Any]:
    conn = open_store(s.console.db)
    try:
        return next(r.details for r in audit.recent(conn, 100) if r.action == action)
    finally:
        conn.close()


# -- looking ------------------------------------------------------------------------------


async def test_anonymous_gets_nothing_of_the_bots_page(setup: Setup) -> None:
    client = setup.console.client
    page = await client.get("/bots", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"].startswith("/login")
    assert (await client.get("/api/bots")).status == 401
    assert (await client.get("/api/bots/live")).status == 401
    posted = await client.post("/bots/settings", data={"challenge_difficulty": "2000"},
                               allow_redirects=False)  # fmt: skip
    assert posted.status == 303 and posted.headers["Location"].startswith("/login")
    assert setup.g1.settings["challenge_difficulty"] == 50_000
    assert all(method == "GET" for method, _ in setup.g1.requests)


async def test_the_page_shows_each_gateway_and_the_totals(setup: Setup) -> None:
    await sign_in(setup)
    await setup.poll()
    _, html = await csrf_of_bots_page(setup)
    assert 'id="nav-bots"' in html and ">Bots and queue<" in html
    for gid in ("g1", "g2"):
        row = re.search(rf'<tr data-gateway="{gid}" data-up="true">(.*?)</tr>', html)
        assert row is not None, html
        assert '<td data-k="blocked">2</td>' in row.group(1)
        assert '<td data-k="challenge_difficulty">50000</td>' in row.group(1)
        assert '<td data-k="sync">in sync</td>' in row.group(1)
    total = re.search(r'<tr data-gateway="total">(.*?)</tr>', html)
    assert total is not None
    assert '<td data-k="allowed">80</td>' in total.group(1)
    assert '<td data-k="health">2/2 up</td>' in total.group(1)
    assert 'data-reason="limited/ip-rate"' in html
    assert '<td data-k="waiting">4</td>' in html  # the queue total: two local queues

    await setup.g2.stop()
    snap = await setup.poll()
    g2 = snap["gateways"][1]
    assert (g2["up"], g2["sync"]) == (False, "unknown (no answer)")
    assert g2["error"].startswith("unreachable")
    assert snap["totals"]["counts"]["allowed"] == 40


# -- changing -----------------------------------------------------------------------------


async def test_operator_sets_difficulty_on_every_gateway_audited(setup: Setup) -> None:
    await sign_in(setup)
    done = await post(
        setup,
        "/bots/settings",
        {"challenge_difficulty": "250000", "admission_rate": "", "block_score": ""},
    )
    assert done.status == 303 and done.headers["Location"] == "/bots"
    assert [g.settings["challenge_difficulty"] for g in setup.gateways] == [250_000, 250_000]
    assert [g.settings["admission_rate"] for g in setup.gateways] == [50.0, 50.0]  # blank
    assert ("alice", "bots.settings", "gateways") in actions(setup)
    details = details_of(setup, "bots.settings")
    assert details["set"] == {"challenge_difficulty": 250_000}
    assert [o["ok"] for o in details["outcome"]] == [True, True]
    _, html = await csrf_of_bots_page(setup)
    assert "Set challenge_difficulty = 250000: applied on g1, g2." in html
    assert 'placeholder="now 250000"' in html


async def test_a_value_out_of_bounds_is_refused_and_sent_nowhere(setup: Setup) -> None:
    await sign_in(setup)
    refused = await post(setup, "/bots/settings", {"challenge_difficulty": "5"})
    assert refused.status == 422
    html = await refused.text()
    assert "Not changed: challenge_difficulty: 5 is outside 1000..10000000" in html
    assert 'value="5"' in html  # what the operator typed is kept
    bad_rate = await post(setup, "/bots/settings", {"admission_rate": "lots"})
    assert "admission_rate: &#x27;lots&#x27; is not a number" in await bad_rate.text()
    assert all(g.settings["challenge_difficulty"] == 50_000 for g in setup.gateways)
    assert all(m == "GET" for g in setup.gateways for m, _ in g.requests)


async def test_a_form_without_csrf_is_refused(setup: Setup) -> None:
    await sign_in(setup)
    for path, data in (("/bots/settings", {"challenge_difficulty": "2000"}),
                       ("/bots/lists", {"list": "block_ips", "op": "add",
                                        "value": "10.0.0.1"})):  # fmt: skip
        refused = await post(setup, path, data, csrf=False)
        assert refused.status == 403
        assert "CSRF token missing or wrong" in await refused.text()
    assert setup.g1.settings["challenge_difficulty"] == 50_000
    assert setup.g1.lists["block_ips"] == []
    assert [a for a in actions(setup) if a[1] == "write.refused"] == [
        ("alice", "write.refused", "/bots/settings"),
        ("alice", "write.refused", "/bots/lists"),
    ]


async def test_an_operator_without_the_right_may_look_but_not_change(setup: Setup) -> None:
    await sign_in(setup, "viewer")
    _, html = await csrf_of_bots_page(setup)
    assert "may look but not change the bot defences" in html
    assert 'id="bot-settings"' not in html and "remove-entry" not in html
    refused = await post(setup, "/bots/lists", {"list": "block_ips", "op": "add",
                                                "value": "10.0.0.1"})  # fmt: skip
    assert refused.status == 403
    assert setup.g1.lists["block_ips"] == []
    assert ("viewer", "denied", "block_ips:10.0.0.1") in actions(setup)


async def test_operator_blocks_and_unblocks_an_ip_and_a_shopper(setup: Setup) -> None:
    await sign_in(setup)
    added = await post(setup, "/bots/lists", {"list": "block_ips", "op": "add",
                                              "value": "203.0.113.0/24"})  # fmt: skip
    assert added.status == 303
    shopper = await post(setup, "/bots/lists", {"list": "block_shoppers", "op": "add",
                                                "value": "bot-7"})  # fmt: skip
    assert shopper.status == 303
    assert [g.lists["block_ips"] for g in setup.gateways] == [["203.0.113.0/24"]] * 2
    assert [g.lists["block_shoppers"] for g in setup.gateways] == [["bot-7"]] * 2
    _, html = await csrf_of_bots_page(setup)
    assert 'data-list="block_ips"' in html and 'data-value="203.0.113.0/24"' in html
    removed = await post(setup, "/bots/lists", {"list": "block_ips", "op": "remove",
                                                "value": "203.0.113.0/24"})  # fmt: skip
    assert removed.status == 303
    assert [g.lists["block_ips"] for g in setup.gateways] == [[], []]
    assert ("alice", "bots.list.add", "block_ips:203.0.113.0/24") in actions(setup)
    assert ("alice", "bots.list.remove", "block_ips:203.0.113.0/24") in actions(setup)


async def test_a_bad_entry_or_a_full_list_is_refused_with_the_reason(setup: Setup) -> None:
    await sign_in(setup)
    bad = await post(setup, "/bots/lists", {"list": "block_ips", "op": "add",
                                            "value": "999.1.1.1"})  # fmt: skip
    assert bad.status == 422
    assert "is not an IP address or network" in await bad.text()
    for i in range(CAP):
        ok = await post(setup, "/bots/lists", {"list": "allow_ips", "op": "add",
                                               "value": f"10.0.0.{i}"})  # fmt: skip
        assert ok.status == 303
    full = await post(setup, "/bots/lists", {"list": "allow_ips", "op": "add",
                                             "value": "10.0.0.99"})  # fmt: skip
    assert full.status == 422
    assert f"Not added: allow_ips holds {CAP} entries already" in await full.text()
    assert len(setup.g1.lists["allow_ips"]) == CAP


async def test_a_gateway_slower_than_the_write_timeout_does_not_hold_up_the_others(
    setup: Setup,
) -> None:
    await sign_in(setup)
    setup.g2.stall_writes_s = BOTS_WRITE_TIMEOUT_MS / 1000 + 1.0
    done = await post(setup, "/bots/settings", {"block_score": "60"})
    assert done.status == 303
    assert setup.g1.settings["block_score"] == 60
    _, html = await csrf_of_bots_page(setup)
    assert "Set block_score = 60: applied on g1; g2: unreachable (TimeoutError)." in html
    assert "gets it on the console&#x27;s next poll" in html
    setup.g2.stall_writes_s = 0.0


# -- keeping the gateways to the record ---------------------------------------------------


async def test_a_restarted_gateway_gets_the_operators_settings_back(setup: Setup) -> None:
    await sign_in(setup)
    await post(setup, "/bots/settings", {"challenge_difficulty": "300000", "block_score": "40"})
    await post(setup, "/bots/lists", {"list": "block_ips", "op": "add", "value": "192.0.2.9"})
    await post(setup, "/bots/lists", {"list": "allow_shoppers", "op": "add", "value": "vip"})
    await setup.g2.stop()
    # While g2 is down an entry is removed: it is recorded, and g1 applies it now.
    await post(setup, "/bots/lists", {"list": "allow_shoppers", "op": "remove", "value": "vip"})
    details = details_of(setup, "bots.list.remove")
    assert [(o["gateway"], o["ok"]) for o in details["outcome"]] == [("g1", True), ("g2", False)]
    await setup.g2.start()  # back with cluster.toml's numbers and empty lists
    assert setup.g2.settings["challenge_difficulty"] == 50_000
    snap = await setup.poll()
    assert setup.g2.settings == {"challenge_difficulty": 300_000, "admission_rate": 50.0,
                                 "block_score": 40}  # fmt: skip
    assert setup.g2.lists["block_ips"] == ["192.0.2.9"]
    assert setup.g2.lists["allow_shoppers"] == []
    g2 = snap["gateways"][1]
    assert g2["pending"] == 0 and g2["sync"].startswith("in sync")
    # The console's own action is audited (this poll's or the background poll's).
    assert ("console", "bots.reapply", "g2") in actions(setup)
    assert details_of(setup, "bots.reapply")["count"] == 2  # the settings, then the entry
    # In sync now: the next poll sends nothing.
    writes = len([r for r in setup.g2.requests if r[0] != "GET"])
    snap = await setup.poll()
    assert len([r for r in setup.g2.requests if r[0] != "GET"]) == writes
    assert snap["gateways"][1]["sync"] == "in sync"


async def test_the_live_stream_pushes_the_page_data(setup: Setup) -> None:
    await sign_in(setup)
    await setup.poll()
    stream = await setup.console.client.get("/api/bots/live")
    assert stream.headers["Content-Type"] == "text/event-stream"
    first = await next_snapshot(stream.content)
    assert [g["id"] for g in first["gateways"]] == ["g1", "g2"]
    await post(setup, "/bots/settings", {"admission_rate": "7.5"})
    changed = await next_snapshot(stream.content)
    assert [g["settings"]["admission_rate"] for g in changed["gateways"]] == [7.5, 7.5]
    assert changed["settings"]["admission_rate"] == 7.5
    stream.close()
    api = await (await setup.console.client.get("/api/bots")).json()
    assert api["wanted_settings"] == {"admission_rate": 7.5}


async def next_snapshot(content: Any) -> dict[str, Any]:
    name, data = "", ""
    while True:
        line = (await content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name == "snapshot":
            return dict(json.loads(data))
