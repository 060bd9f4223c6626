"""Proof of work and the waiting room: the arithmetic and the signed tokens (pure), then
the real gateway application over real HTTP on an in-process ledger (as in
test_gateway_api.py), then two gateways sharing the real Redis at 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from bots import waiting_room as wr
from bots.challenge import ChallengeInvalid, challenge_key, new_challenge, solve, verify
from bots.policy import BotPolicy
from bots.redis_link import key_prefix
from bots.replay import ReplayStore
from bots.room import AdmissionExpired, WaitingRoom
from bots.tickets import (
    InvalidTicket,
    Ticket,
    holder_of,
    queue_key,
    read_admission,
    read_ticket,
    sign_admission,
    sign_ticket,
)
from cluster.auth import internal_token
from cluster.config import BotsConfig, ClusterConfig, build_config
from gateway.admission import GATE
from gateway.identity import issue_token
from gateway.problems import PROBLEM_BASE
from gateway.server import create_app
from tests.support.shopper import BROWSER_UA, Shopper, admission
from tests.test_gateway_api import SECRET, InProcessCluster, Shop

REDIS_URL = "redis://127.0.0.1:6379/0"
# Quick to solve in tests; the numbers of a real sale are in cluster.toml.
EASY = 2000


# -- the waiting room's arithmetic -------------------------------------------------------


def test_nobody_is_admitted_before_the_opening_then_in_ticket_order_at_the_rate() -> None:
    opening, rate = 1000.0, 10.0
    cursor = wr.Cursor()
    for i in range(50):  # 50 arrivals in the 5 s before the opening
        cursor = wr.issue(cursor, opening - 5 + i * 0.1, rate, opening)
        assert cursor.admitted == 0
    assert cursor.issued == 50
    assert wr.position(50, cursor) == 50
    assert wr.estimated_wait_s(50, cursor, opening - 0.1, rate, opening) == pytest.approx(5.1)

    admitted_at: dict[int, float] = {}
    t = opening
    while t <= opening + 6:
        cursor = wr.advance(cursor, t, rate, opening)
        for seq in range(1, cursor.issued + 1):
            if wr.position(seq, cursor) == 0:
                admitted_at.setdefault(seq, t)
        # Never more than rate * elapsed, never more than were issued.
        assert cursor.admitted <= min(cursor.issued, rate * (t - opening) + 1e-6)
        t = round(t + 0.05, 6)
    assert sorted(admitted_at) == list(range(1, 51))
    order = sorted(admitted_at, key=lambda seq: (admitted_at[seq], seq))
    assert order == list(range(1, 51))  # the admitted sequence is sorted by arrival
    assert admitted_at[10] == pytest.approx(opening + 1.0)
    assert admitted_at[50] == pytest.approx(opening + 5.0)


def test_an_arrival_with_nobody_waiting_is_admitted_at_once_but_a_crowd_queues() -> None:
    rate = 2.0
    cursor = wr.Cursor()
    cursor = wr.issue(cursor, 100.0, rate, None)
    assert cursor.admitted == 1  # nobody waiting: in at once
    cursor = wr.issue(cursor, 200.0, rate, None)  # an hour later: in at once as well
    assert cursor.admitted == 2
    for _ in range(10):  # a crowd at one instant: an idle hour banked no burst for it
        cursor = wr.issue(cursor, 200.0, rate, None)
    assert cursor.admitted == 2
    cursor = wr.advance(cursor, 201.0, rate, None)
    assert cursor.admitted == 4


def test_the_rate_is_read_live() -> None:
    cursor = wr.Cursor()
    for _ in range(100):
        cursor = wr.issue(cursor, 0.0, 1.0, 0.0)
    cursor = wr.advance(cursor, 10.0, 1.0, 0.0)
    assert cursor.admitted == 10  # 1/s from the opening
    cursor = wr.advance(cursor, 12.0, 20.0, 0.0)  # the operator raised it to 20/s
    assert cursor.admitted == 50
    assert wr.estimated_wait_s(100, cursor, 12.0, 20.0, 0.0) == pytest.approx(50 / 20)


def test_a_room_scheduled_for_later_admits_nobody_even_after_an_idle_time() -> None:
    cursor = wr.issue(wr.Cursor(), 0.0, 5.0, None)  # an earlier sale
    cursor = wr.advance(cursor, 100.0, 5.0, None)
    cursor = wr.issue(cursor, 100.0, 5.0, 160.0)  # the next sale opens at 160
    assert (cursor.issued, cursor.admitted) == (2, 1)
    assert wr.advance(cursor, 159.9, 5.0, 160.0).admitted == 1
    assert wr.advance(cursor, 160.2, 5.0, 160.0).admitted == 2


def test_the_opening_is_the_earliest_start_among_sales_not_over() -> None:
    now = 1_000.0
    ms = 1000
    assert wr.opening_s([], now) is None
    products = [
        {"opens_at_ms": 500 * ms, "closes_at_ms": 900 * ms},  # over
        {"opens_at_ms": 2_000 * ms, "closes_at_ms": None},
        {"opens_at_ms": 1_500 * ms, "closes_at_ms": 3_000 * ms},
    ]
    assert wr.opening_s(products, now) == 1_500.0
    assert wr.opening_s([*products, {"opens_at_ms": None, "closes_at_ms": None}], now) is None
    assert wr.opening_s([{"opens_at_ms": 900 * ms, "closes_at_ms": 1_100 * ms}], now) == 900.0


# -- tickets and admission tokens --------------------------------------------------------


def test_tickets_and_admissions_are_signed_and_expire() -> None:
    key, now = queue_key(SECRET), 1_000_000.0
    alice = holder_of(key, "alice")
    ticket = Ticket("shared", 7, int(now * 1000), "0123456789abcdef", alice)
    text = sign_ticket(key, ticket)
    assert read_ticket(key, text, now=now) == ticket
    token = sign_admission(key, ticket, int((now + 60) * 1000))
    assert read_admission(key, token, now=now).seq == 7
    assert read_admission(key, token, now=now).holder == alice
    bob = holder_of(key, "bob")

    forged = [
        text.replace(".7.", ".1.", 1),  # moving up the line
        sign_ticket(queue_key("another-cluster"), ticket),
        text[:-2] + ("AA" if not text.endswith("AA") else "BB"),
        "t1.shared.1.1.0123456789abcdef",
        text.replace(alice, bob),  # handing one's place to another account
        "",
        "x" * 1000,
    ]
    for bad in forged:
        with pytest.raises(InvalidTicket):
            read_ticket(key, bad, now=now)
    with pytest.raises(InvalidTicket):
        read_admission(key, text, now=now)  # a ticket is not an admission
    with pytest.raises(InvalidTicket):
        read_admission(key, token.replace(".7.", ".8.", 1), now=now)
    with pytest.raises(InvalidTicket):
        read_admission(key, token.replace(alice, bob), now=now)
    with pytest.raises(InvalidTicket) as expired:
        read_admission(key, token, now=now + 61)
    assert expired.value.expired


@given(
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=40),
    st.integers(1, 10**12),
    st.sampled_from(["shared", "l0123456789ab"]),
)
def test_a_place_and_its_admission_belong_to_one_shopper(
    user: str, other: str, seq: int, room: str
) -> None:
    key, now = queue_key(SECRET), 1_000_000.0
    mine = holder_of(key, user)
    assert mine == holder_of(key, user) and len(mine) == 16  # stable, fixed size
    assert mine != holder_of(queue_key("another-cluster"), user)  # keyed
    ticket = Ticket(room, seq, int(now * 1000), "0123456789abcdef", mine)
    text = sign_ticket(key, ticket)
    token = sign_admission(key, ticket, int((now + 60) * 1000))
    assert read_ticket(key, text, now=now).holder == mine
    assert read_admission(key, token, now=now).holder == mine
    if other != user:
        theirs = holder_of(key, other)
        assert theirs != mine  # 64 bits: a collision here would be news
        for forged in (text.replace(mine, theirs), token.replace(mine, theirs)):
            with pytest.raises(InvalidTicket):
                read_admission(key, forged, now=now)
            with pytest.raises(InvalidTicket):
                read_ticket(key, forged, now=now)


# -- challenges ----------------------------------------------------------------------------


def _encode(doc: Mapping[str, Any]) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


def test_a_solution_is_checked_against_the_signed_challenge() -> None:
    key, now = challenge_key(SECRET), time.time()
    challenge = new_challenge(key, max_number=EASY, now=now, ttl_s=60)
    assert challenge["maxnumber"] == EASY and challenge["algorithm"] == "SHA-256"
    payload = solve(challenge)
    assert payload is not None
    solved = verify(key, payload, now=now + 1)
    assert solved.challenge == challenge["challenge"]
    assert solved.issued_s == pytest.approx(now, abs=0.002)

    doc = json.loads(base64.b64decode(payload))
    wrong = [
        {**doc, "number": doc["number"] + 1},
        {**doc, "salt": doc["salt"].replace("expires=", "expires=9")},  # a longer life
        {**doc, "algorithm": "SHA-1"},
        {**doc, "number": "12"},
        {k: v for k, v in doc.items() if k != "signature"},
    ]
    for bad in wrong:
        with pytest.raises(ChallengeInvalid):
            verify(key, _encode(bad), now=now)
    for garbage in ("", "not base64!", _encode([1, 2]), "A" * 5000):
        with pytest.raises(ChallengeInvalid):
            verify(key, garbage, now=now)
    with pytest.raises(ChallengeInvalid):
        verify(challenge_key("another-cluster"), payload, now=now)
    with pytest.raises(ChallengeInvalid) as expired:
        verify(key, payload, now=now + 61)
    assert expired.value.expired


async def test_the_local_replay_store_accepts_once_and_stays_bounded() -> None:
    store = ReplayStore(max_entries=3)
    assert await store.claim("a", 100.0, 0.0)
    assert not await store.claim("a", 100.0, 1.0)
    for name in "bcd":
        assert await store.claim(name, 100.0, 2.0)
    assert len(store) == 3  # "a" was the oldest: dropped
    assert await store.claim("e", 100.0, 101.0)  # every earlier one expired: forgotten
    assert len(store) == 1


# -- through the gateway -----------------------------------------------------------------


def _config(tmp_path: Path, bots: Mapping[str, Any], *, name: str | None = None) -> ClusterConfig:
    return build_config(
        {
            "cluster": {"secret": SECRET, "name": name or "t" + secrets.token_hex(6)},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [
                {"id": "g1", "listen": "127.0.0.1:3"},
                {"id": "g2", "listen": "127.0.0.1:4"},
            ],
            "gateway": {"feed_wait_ms": 100},
            "bots": {"challenge_difficulty": EASY, "min_page_to_write_ms": 0, **bots},
        },
        tmp_path,
    )


async def _start(config: ClusterConfig, cluster: InProcessCluster, gateway: str = "g1") -> Shop:
    app = create_app(config, gateway, cluster=cluster)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return Shop(client, cluster)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Shop]:
    """Proof of work and the waiting room on; the other defences off (their own tests)."""
    config = _config(tmp_path, {"rate_limits": False, "heuristics": False})
    shop = await _start(config, InProcessCluster(config))
    try:
        yield shop
    finally:
        await shop.client.close()


def _slug(body: Mapping[str, Any]) -> str:
    return str(body.get("type", "")).removeprefix(PROBLEM_BASE)


async def _post_hold(shop: Shop, user: str, pid: str, headers: Mapping[str, str]) -> Any:
    return await shop.client.post(
        "/add-to-cart", json={"user_id": user, "product_id": pid, "quantity": 1},
        headers={**shop.auth(user), "User-Agent": BROWSER_UA, **headers},
    )  # fmt: skip


def _token(user: str) -> str:
    return issue_token(SECRET, user, 600)


async def _queue(client: Any, user: str) -> Any:
    return await client.post("/queue", headers={"Authorization": f"Bearer {_token(user)}"})


def _decisions(shop: Shop, decision: str, reason: str) -> float:
    value = shop.state.metrics.bot_decisions.labels(decision, reason)._value.get()
    return float(value)


async def test_a_hold_needs_a_solved_challenge_used_once(gated: Shop) -> None:
    gated.create("tee", 10)
    ticket = await admission(gated.client, _token("alice"))
    assert ticket is not None
    entry = {"X-Admission": ticket}

    resp = await _post_hold(gated, "alice", "tee", entry)
    body = await resp.json(content_type=None)
    assert resp.status == 403 and resp.content_type == "application/problem+json"
    assert _slug(body) == "challenge-required" and body["challenge"] == "/challenge"
    assert _decisions(gated, "challenged", "challenge-missing") == 1

    resp = await gated.client.get("/challenge")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    challenge = await resp.json()
    assert challenge["maxnumber"] == EASY
    bad = dict(json.loads(base64.b64decode(str(solve(challenge)))), number=-1)
    resp = await _post_hold(gated, "alice", "tee", {**entry, "X-Altcha": _encode(bad)})
    assert resp.status == 403 and _slug(await resp.json()) == "challenge-invalid"
    assert gated.cluster.ledger.product("tee").reserved == 0  # type: ignore[union-attr]

    payload = solve(challenge)
    assert payload is not None
    resp = await _post_hold(gated, "alice", "tee", {**entry, "X-Altcha": payload})
    assert resp.status == 200, await resp.text()
    bobs = await admission(gated.client, _token("bob"))
    assert bobs is not None
    again = await _post_hold(gated, "bob", "tee", {"X-Admission": bobs, "X-Altcha": payload})
    body = await again.json()
    assert again.status == 403 and _slug(body) == "challenge-replayed"
    assert _decisions(gated, "challenged", "challenge-replayed") == 1
    product = gated.cluster.ledger.product("tee")
    assert product is not None and product.reserved == 1

    # The console's difficulty applies to the next challenge at once.
    gated.client.app[GATE].policy.challenge_difficulty = 3000  # type: ignore[index]
    assert (await (await gated.client.get("/challenge")).json())["maxnumber"] == 3000


async def test_every_write_needs_an_admission_token(gated: Shop) -> None:
    gated.create("tee", 10)
    shopper = Shopper(gated.client, SECRET, "carol")
    resp = await shopper.hold("tee")  # no admission yet
    body = await resp.json()
    assert resp.status == 403 and _slug(body) == "admission-required"
    assert body["queue"] == "/queue" and "X-Admission" in body["detail"]
    assert _decisions(gated, "queued", "admission-missing") == 1
    checkout = await gated.client.post(
        "/checkout", json={}, headers={**gated.auth("carol"), "X-Admission": "a1.forged"}
    )
    assert checkout.status == 403 and _slug(await checkout.json()) == "admission-required"
    assert _decisions(gated, "queued", "admission-invalid") == 1
    release = await gated.client.delete("/cart/c/items/h", headers=gated.auth("carol"))
    assert release.status == 403

    await shopper.enter()
    resp = await shopper.hold("tee")
    assert resp.status == 200, await resp.text()
    # A ticket is not an admission, and reads need neither.
    ticket = await (await _queue(gated.client, "dave")).json()
    resp = await _post_hold(gated, "dave", "tee", {"X-Admission": ticket["ticket"]})
    assert resp.status == 403
    assert (await gated.client.get("/products/tee")).status == 200


async def test_an_admission_runs_out_and_forged_tickets_are_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, {"rate_limits": False, "heuristics": False, "challenge": False,
                                "admission_ttl_s": 1})  # fmt: skip
    shop = await _start(config, InProcessCluster(config))
    try:
        shop.create("tee", 10)
        joined = await (await _queue(shop.client, "erin")).json()
        assert joined["admitted"] and joined["position"] == 0
        token = joined["admission"]
        assert joined["admission_expires_at_ms"] <= time.time() * 1000 + 1000
        erin = shop.auth("erin")
        looked = await (await shop.client.get(f"/queue/{joined['ticket']}", headers=erin)).json()
        assert looked["admission_expires_at_ms"] == joined["admission_expires_at_ms"]
        assert (await _post_hold(shop, "erin", "tee", {"X-Admission": token})).status == 200
        await asyncio.sleep(1.1)
        resp = await _post_hold(shop, "erin", "tee", {"X-Admission": token})
        assert resp.status == 403 and _slug(await resp.json()) == "admission-required"
        assert _decisions(shop, "queued", "admission-expired") == 1
        # Polling the old ticket does not renew it: queue again.
        resp = await shop.client.get(f"/queue/{joined['ticket']}", headers=erin)
        assert resp.status == 410 and _slug(await resp.json()) == "admission-expired"

        key = queue_key(SECRET)
        mine = holder_of(key, "erin")
        forged = sign_ticket(queue_key("guess"), Ticket("shared", 1, 0, "0" * 16, mine))
        for bad in (forged, joined["ticket"].replace(".1.", ".0.", 1), "nonsense",
                    sign_ticket(key, Ticket("lffffffffffff", 1, int(time.time() * 1000),
                                            "0" * 16, mine))):  # fmt: skip
            resp = await shop.client.get(f"/queue/{bad}", headers=erin)
            assert resp.status == 403, bad
            assert _slug(await resp.json()) == "ticket-invalid"
    finally:
        await shop.client.close()


async def _delete_keys(name: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=key_prefix(name) + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.parametrize("line", ["one gateway", "two gateways sharing Redis"])
async def test_the_waiting_room_admits_in_arrival_order_from_the_opening(
    tmp_path: Path, line: str
) -> None:
    rate, crowd = 20.0, 30
    name = "t" + secrets.token_hex(8)
    # A loaded test machine can be slower than the shipped 50 ms: this test is about order.
    shared = {"redis_url": REDIS_URL, "redis_timeout_ms": 1000} if line != "one gateway" else {}
    config = _config(tmp_path, {"rate_limits": False, "heuristics": False, "challenge": False,
                                "admission_rate": rate, "queue_opens_before_s": 60, **shared},
                     name=name)  # fmt: skip
    cluster = InProcessCluster(config)
    shops = [await _start(config, cluster, "g1")]
    if shared:
        shops.append(await _start(config, cluster, "g2"))
    try:
        # Far enough ahead that every ticket is handed out before it on a loaded machine.
        opening = time.time() + 3.0
        shops[0].create("tee", 100, opens_at_ms=int(opening * 1000))
        for shop in shops:
            await shop.synced()
        tickets = []
        for i in range(crowd):  # with two gateways, arrivals alternate between them
            resp = await _queue(shops[i % len(shops)].client, f"p{i}")
            body = await resp.json()
            assert resp.status == 201 and not body["admitted"], body
            tickets.append(body)
        assert [t["position"] for t in tickets] == list(range(1, crowd + 1))
        assert tickets[-1]["estimated_wait_s"] == pytest.approx(
            opening - time.time() + crowd / rate, abs=0.5
        )
        order: list[int] = []
        waiting = list(enumerate(tickets))
        async with asyncio.timeout(15):
            while waiting:
                for i, ticket in list(waiting):
                    # ...and each ticket is followed at the other gateway.
                    client = shops[(i + 1) % len(shops)].client
                    mine = {"Authorization": f"Bearer {_token(f'p{i}')}"}
                    resp = await client.get(f"/queue/{ticket['ticket']}", headers=mine)
                    body = await resp.json()
                    seen = time.time()
                    if body["admitted"]:
                        assert body["admission"] and seen >= opening
                        # Everyone who came before is in by now: the room admits in ticket
                        # order. (Polled in turn, a later ticket can be *seen* first when
                        # the cursor passes two between polls on a slow machine.)
                        for j, earlier in [w for w in waiting if w[0] < i]:
                            again = await client.get(
                                f"/queue/{earlier['ticket']}",
                                headers={"Authorization": f"Bearer {_token(f'p{j}')}"},
                            )
                            assert (await again.json())["admitted"], (j, i)
                            order.append(j)
                            waiting.remove((j, earlier))
                        order.append(i)
                        waiting.remove((i, ticket))
                    admitted = crowd - len(waiting)
                    # Nobody before the opening, then at most the rate per second.
                    assert admitted <= 1 + rate * max(0.0, seen - opening), (admitted, seen)
                await asyncio.sleep(0.02)
        assert order == sorted(order)  # the admitted sequence is sorted by arrival
        for shop in shops:  # the console's numbers, refreshed every second
            room = shop.client.app[GATE].room  # type: ignore[index]
            async with asyncio.timeout(10):
                while room.stats()["admitted"] < crowd or room.stats()["issued"] < crowd:
                    await asyncio.sleep(0.05)
            stats = room.stats()
            assert stats["issued"] == stats["admitted"] == crowd and stats["waiting"] == 0
            assert stats["opens_at"] == pytest.approx(opening, abs=0.001)
            assert stats["admission_rate"] == rate
    finally:
        for shop in shops:
            await shop.client.close()
        if shared:
            await _delete_keys(name)


async def test_tickets_are_handed_out_only_shortly_before_the_opening(tmp_path: Path) -> None:
    config = _config(tmp_path, {"queue_opens_before_s": 60})
    shop = await _start(config, InProcessCluster(config))
    try:
        shop.create("cap", 10, opens_at_ms=int((time.time() + 3600) * 1000))
        await shop.synced()
        resp = await shop.client.post("/queue", headers={"User-Agent": BROWSER_UA,
                                                         **shop.auth("early")})  # fmt: skip
        body = await resp.json()
        assert resp.status == 409 and _slug(body) == "queue-not-open"
        assert 3530 <= int(resp.headers["Retry-After"]) <= 3541
        assert body["opens_at_ms"] - body["queue_opens_at_ms"] == 60_000
    finally:
        await shop.client.close()


async def test_a_bot_swarm_gets_nothing_while_real_shoppers_buy(tmp_path: Path) -> None:
    # Every client here is 127.0.0.1, so per-IP rate limits (and the count of accounts per
    # address) would also refuse the real shoppers; they have tests of their own.
    # Heuristics stay on.
    config = _config(tmp_path, {"rate_limits": False, "accounts_per_ip": 1000})
    shop = await _start(config, InProcessCluster(config))
    try:
        shop.create("tee", 20, per_user_limit=2)
        await shop.synced()
        bot_ticket = await admission(shop.client, _token("bot0"))  # bots can queue too
        assert bot_ticket is not None

        async def bot(i: int) -> int:
            headers = {**shop.auth(f"bot{i % 25}")}
            if i % 2:
                headers["X-Admission"] = bot_ticket
            if i % 3 == 0:
                headers["X-Altcha"] = _encode({"algorithm": "SHA-256", "number": i})
            resp = await shop.client.post(
                "/add-to-cart",
                json={"user_id": f"bot{i % 25}", "product_id": "tee", "quantity": 2},
                headers=headers,
            )
            return resp.status

        people = [Shopper(shop.client, SECRET, f"person{i}") for i in range(5)]

        async def person(p: Shopper) -> int:
            await p.enter()
            return (await p.hold("tee", 2)).status

        results = await asyncio.gather(*(bot(i) for i in range(300)), *map(person, people))
        bots, persons = results[:300], results[300:]
        assert set(bots) <= {403, 429} and persons == [200] * 5
        product = shop.cluster.ledger.product("tee")
        assert product is not None and (product.reserved, product.sold) == (10, 0)
        ledger = shop.cluster.ledger
        assert sum(ledger.user_units(f"bot{i}", "tee") for i in range(25)) == 0
        assert [ledger.user_units(p.user, "tee") for p in people] == [2] * 5
        assert _decisions(shop, "challenged", "challenge-missing") > 0
        assert _decisions(shop, "queued", "admission-missing") > 0
        # bot0's admission serves bot0 only: the other accounts are refused.
        assert _decisions(shop, "queued", "admission-not-yours") > 0
    finally:
        await shop.client.close()


# -- two gateways, one Redis -----------------------------------------------------------------


@pytest.fixture
async def redis_pair(tmp_path: Path) -> AsyncIterator[tuple[Shop, Shop]]:
    """Two gateway applications of one cluster (one ledger), sharing Redis under a
    random cluster name (so a random key prefix), deleted afterwards."""
    name = "t" + secrets.token_hex(8)
    config = _config(tmp_path, {"rate_limits": False, "heuristics": False,
                                "redis_url": REDIS_URL, "redis_timeout_ms": 1000},
                     name=name)  # fmt: skip
    cluster = InProcessCluster(config)
    a = await _start(config, cluster, "g1")
    b = await _start(config, cluster, "g2")
    try:
        yield a, b
    finally:
        await a.client.close()
        await b.client.close()
        await _delete_keys(name)


async def test_two_gateways_refuse_one_solution_twice(redis_pair: tuple[Shop, Shop]) -> None:
    a, b = redis_pair
    a.create("tee", 10)
    admitted = await admission(a.client, _token("alice"))
    bobs = await admission(b.client, _token("bob"))
    assert admitted is not None and bobs is not None
    challenge = await (await a.client.get("/challenge")).json()
    payload = solve(challenge)
    assert payload is not None
    headers = {"X-Admission": admitted, "X-Altcha": payload}
    first = await _post_hold(b, "alice", "tee", headers)  # solved at A, used at B
    assert first.status == 200, await first.text()
    again = await _post_hold(a, "bob", "tee", {**headers, "X-Admission": bobs})
    assert again.status == 403 and _slug(await again.json()) == "challenge-replayed"
    assert a.client.app[GATE].replay.redis_ok  # type: ignore[index]
    product = a.cluster.ledger.product("tee")
    assert product is not None and product.reserved == 1


async def test_two_gateways_share_one_line(redis_pair: tuple[Shop, Shop]) -> None:
    a, b = redis_pair
    room_a = a.client.app[GATE].room  # type: ignore[index]
    room_a.policy.admission_rate = 0.1  # one admission per 10 s: everyone after waits
    b.client.app[GATE].room.policy.admission_rate = 0.1  # type: ignore[index]
    first = await (await _queue(a.client, "first")).json()
    second = await (await _queue(b.client, "second")).json()
    third = await (await _queue(a.client, "third")).json()
    assert first["admitted"] and not second["admitted"] and not third["admitted"]
    assert (second["position"], third["position"]) == (1, 2)
    # Either gateway answers for any ticket of the shared line.
    third_at_b = await b.client.get(f"/queue/{third['ticket']}", headers=b.auth("third"))
    seen_at_b = await third_at_b.json()
    assert seen_at_b["position"] == 2
    first_at_a = await a.client.get(f"/queue/{first['ticket']}", headers=a.auth("first"))
    seen_at_a = await first_at_a.json()
    assert seen_at_a["admitted"] and seen_at_a["admission"]
    assert room_a.stats()["issued"] == 3 and room_a.stats()["waiting"] == 2


async def test_without_redis_each_gateway_falls_back_to_its_own_memory(tmp_path: Path) -> None:
    config = _config(tmp_path, {"rate_limits": False, "heuristics": False,
                                "redis_url": "redis://127.0.0.1:1/0"})  # fmt: skip
    shop = await _start(config, InProcessCluster(config))
    try:
        shop.create("tee", 10)
        admitted = await admission(shop.client, _token("alice"))  # the local room answers
        assert admitted is not None
        challenge = await (await shop.client.get("/challenge")).json()
        payload = str(solve(challenge))
        headers = {"X-Admission": admitted, "X-Altcha": payload}
        assert (await _post_hold(shop, "alice", "tee", headers)).status == 200
        again = await _post_hold(shop, "alice", "tee", headers)
        assert again.status == 403 and _slug(await again.json()) == "challenge-replayed"
        gate = shop.client.app[GATE]  # type: ignore[index]
        assert not gate.replay.redis_ok and not gate.room.redis_ok
    finally:
        await shop.client.close()


async def test_the_console_changes_difficulty_and_rate_and_sees_the_line(
    gated: Shop,
) -> None:
    auth = {"Authorization": f"Bearer {internal_token(SECRET)}"}
    resp = await gated.client.put(
        "/internal/bots/settings", json={"challenge_difficulty": 4000, "admission_rate": 0.1},
        headers=auth,
    )  # fmt: skip
    assert resp.status == 200, await resp.text()
    challenge = await (await gated.client.get("/challenge")).json()
    assert challenge["maxnumber"] == 4000
    first = await (await _queue(gated.client, "first")).json()
    second = await (await _queue(gated.client, "second")).json()
    assert first["admitted"] and not second["admitted"]
    assert second["estimated_wait_s"] == pytest.approx(10.0, abs=0.5)  # 0.1 per second
    document = await (await gated.client.get("/internal/bots", headers=auth)).json()
    queue = document["queue"]
    assert (queue["issued"], queue["admitted"], queue["waiting"]) == (2, 1, 1)
    assert queue["admission_rate"] == 0.1 and queue["opens_at"] is None
    assert document["counts"]["queued"] >= 1


# -- a place in line is the shopper's ---------------------------------------------------------


async def test_the_queue_needs_the_shoppers_token_and_the_place_is_theirs(gated: Shop) -> None:
    gated.create("tee", 10)
    resp = await gated.client.post("/queue", headers={"User-Agent": BROWSER_UA})
    body = await resp.json()
    assert resp.status == 401 and _slug(body) == "unauthorized"
    assert resp.content_type == "application/problem+json"

    alice = Shopper(gated.client, SECRET, "alice")
    await alice.enter()
    assert alice.admission is not None
    # Mallory holds alice's admission token (sniffed, or shared by a farm): refused before
    # her proof of work is looked at, and counted.
    mallory = Shopper(gated.client, SECRET, "mallory")
    mallory.admission = alice.admission
    resp = await mallory.hold("tee")
    body = await resp.json()
    assert resp.status == 403 and _slug(body) == "admission-not-yours"
    assert body["queue"] == "/queue"
    assert _decisions(gated, "queued", "admission-not-yours") == 1
    # Without any bearer token: 401, before a solution is spent.
    anonymous = await gated.client.post(
        "/add-to-cart", json={"user_id": "alice", "product_id": "tee", "quantity": 1},
        headers={"User-Agent": BROWSER_UA, "X-Admission": alice.admission},
    )  # fmt: skip
    assert anonymous.status == 401 and _slug(await anonymous.json()) == "unauthorized"
    # Nor can she follow alice's ticket.
    ticket = (await (await _queue(gated.client, "alice")).json())["ticket"]
    resp = await gated.client.get(f"/queue/{ticket}", headers=gated.auth("mallory"))
    assert resp.status == 403 and _slug(await resp.json()) == "ticket-invalid"
    resp = await gated.client.get(f"/queue/{ticket}")
    assert resp.status == 401
    # Alice's own admission works, and mallory's own place works for her.
    assert (await alice.hold("tee")).status == 200
    await mallory.enter()
    assert (await mallory.hold("tee")).status == 200
    product = gated.cluster.ledger.product("tee")
    assert product is not None and product.reserved == 2


@pytest.mark.parametrize("line", ["one gateway", "two gateways sharing Redis"])
async def test_asking_again_gives_the_same_place_not_a_new_one(tmp_path: Path, line: str) -> None:
    name = "t" + secrets.token_hex(8)
    shared = {"redis_url": REDIS_URL, "redis_timeout_ms": 1000} if line != "one gateway" else {}
    config = _config(tmp_path, {"rate_limits": False, "heuristics": False, "challenge": False,
                                "admission_rate": 0.1, **shared}, name=name)  # fmt: skip
    cluster = InProcessCluster(config)
    shops = [await _start(config, cluster, "g1")]
    if shared:
        shops.append(await _start(config, cluster, "g2"))
    try:
        first = await (await _queue(shops[0].client, "first")).json()
        assert first["admitted"]  # nobody waiting: in at once
        waiting = await (await _queue(shops[0].client, "second")).json()
        assert not waiting["admitted"] and waiting["position"] == 1
        # Asking again, at any gateway of the line: the same ticket, the same place.
        for shop in shops:
            again = await _queue(shop.client, "second")
            body = await again.json()
            assert again.status == 201
            assert (body["ticket"], body["position"]) == (waiting["ticket"], 1)
            admitted_again = await (await _queue(shop.client, "first")).json()
            assert admitted_again["ticket"] == first["ticket"] and admitted_again["admitted"]
            assert admitted_again["admission_expires_at_ms"] == first["admission_expires_at_ms"]
        third = await (await _queue(shops[-1].client, "third")).json()
        assert third["position"] == 2  # no extra places were handed out
        assert shops[-1].client.app[GATE].room.stats()["issued"] == 3  # type: ignore[index]
    finally:
        for shop in shops:
            await shop.client.close()
        if shared:
            await _delete_keys(name)


async def test_a_place_whose_admission_ran_out_is_given_up_for_a_new_one(tmp_path: Path) -> None:
    config = _config(tmp_path, {"rate_limits": False, "heuristics": False, "challenge": False,
                                "admission_ttl_s": 1})  # fmt: skip
    shop = await _start(config, InProcessCluster(config))
    try:
        first = await (await _queue(shop.client, "erin")).json()
        assert first["admitted"]
        await asyncio.sleep(1.1)
        again = await (await _queue(shop.client, "erin")).json()
        assert again["ticket"] != first["ticket"] and again["admitted"]
        assert again["admission_expires_at_ms"] > first["admission_expires_at_ms"]
    finally:
        await shop.client.close()


async def test_an_admission_forgotten_past_the_table_bound_is_not_renewed() -> None:
    # The local room keeps max_tracked_clients admission moments; polling a ticket whose
    # moment was dropped must not start a new admission (it would never run out).
    config = BotsConfig(max_tracked_clients=100, admission_rate=1000.0)
    room = WaitingRoom(b"k" * 32, BotPolicy.from_config(config), config)
    t0 = time.time()
    first = await room.join(t0, None, "shopper0")
    assert first.admitted
    for i in range(1, 150):  # 149 more shoppers admitted and seen: the first is dropped
        assert (await room.join(t0 + i / 100, None, f"shopper{i}")).admitted
    late = t0 + config.admission_ttl_s / 2  # well within the first one's admission...
    with pytest.raises(AdmissionExpired):  # ...but its moment is gone: queue again
        await room.look(first.ticket, late, None, "shopper0")
    again = await room.join(late, None, "shopper0")
    assert again.seq > first.seq  # a new place at the back, not the old one renewed
    # A ticket still on record keeps its own admission, from when it was first seen.
    recent = await room.join(late, None, "shopper149")
    assert recent.admitted and recent.admission_expires_ms == int(
        (t0 + 1.49 + config.admission_ttl_s) * 1000
    )
