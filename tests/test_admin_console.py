"""The console over HTTP (aiohttp test client), against an in-process cluster that runs
the real ledger: sign-in, sessions, CSRF, rights, audit, the sale forms, orders, the
cluster view and the live stream."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import CookieJar
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from admin import audit
from admin.limits import (
    LOGIN_FAILURES_PER_USERNAME,
    MAX_AUDIT_ROWS_SHOWN,
    MAX_FORM_BYTES,
    SESSION_IDLE_MS,
)
from admin.operators import create_operator
from admin.server import create_app
from admin.store import open_store
from cluster.auth import internal_token
from cluster.client import SubmitResult
from cluster.config import ClusterConfig, build_config
from cluster.errors import CommitUnknown, NotFound, Unreachable
from ledger import Ledger
from ledger.codec import encode_event, encode_result, encode_view
from pii.keystore import KeyStore
from pii.sealing import Sealer

PASSWORD = "correct horse battery"
T0_MS = 1_900_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = T0_MS

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class LedgerCluster:
    """A cluster in one process: the real ledger, a leader n1, a lagging n2, n3 down.
    It answers the calls of ClusterClient the console makes (admin.cluster_port)."""

    clock: FakeClock
    ledger: Ledger = field(default_factory=Ledger)
    events: list[dict[str, Any]] = field(default_factory=list)
    submitted: list[list[dict[str, Any]]] = field(default_factory=list)
    fail_next_submit: bool = False
    n2_behind: int = 2
    hung: set[str] = field(default_factory=set)  # nodes that never answer (paused)

    async def submit(
        self, commands: list[dict[str, Any]], *, deadline_s: float = 10.0
    ) -> SubmitResult:
        self.submitted.append(commands)
        applied = self.ledger.apply_encoded(self.clock(), commands)
        self.events.extend(encode_event(e) for e in applied.events)
        if self.fail_next_submit:
            self.fail_next_submit = False
            raise CommitUnknown("leader lost before confirming")
        return SubmitResult(applied.index, [encode_result(r) for r in applied.results])

    def status(self, node_id: str) -> dict[str, Any]:
        idx = self.ledger.index + 10

        if node_id == "n3":
            raise Unreachable("n3: connection refused")
        role, commit = ("leader", idx) if node_id == "n1" else ("follower", idx - self.n2_behind)
        return {
            "id": node_id, "role": role, "term": 3, "commit_index": commit,
            "last_applied": commit, "log_size": commit, "uptime_s": 42.0,
            "leader": {"id": "n1", "api": "127.0.0.1:1"},
        }  # fmt: skip

    async def get(
        self,
        path: str,
        *,
        prefer_leader: bool = True,
        params: Mapping[str, str | int] | None = None,
        node_id: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        led = self.ledger
        if path == "/v1/status" and node_id is not None:
            if node_id in self.hung:  # like the client: no answer within the timeout
                await asyncio.sleep(timeout_s or 6.0)
                raise Unreachable(f"{node_id}: TimeoutError")
            return self.status(node_id)
        if path == "/v1/products":
            return {"index": led.index, "products": [encode_view(p) for p in led.products()]}
        if m := re.fullmatch(r"/v1/products/(.+)", path):
            product = led.product(m.group(1))
            if product is None:
                raise NotFound("no such product")
            return {"index": led.index, "product": encode_view(product)}
        if m := re.fullmatch(r"/v1/orders/(.+)", path):
            order = led.order(m.group(1))
            if order is None:
                raise NotFound("no such order")
            return {"index": led.index, "order": encode_view(order)}
        if path == "/v1/feed":
            start = int((params or {}).get("from", 0))
            newer = [e for e in self.events if int(e["index"]) > start]
            if not newer:
                await asyncio.sleep(0.05)  # a short long-poll
                newer = [e for e in self.events if int(e["index"]) > start]
            last = max([start, *(int(e["index"]) for e in newer)])
            return {"events": newer, "last_index": last, "snapshot": None}
        raise NotFound(path)

    async def close(self) -> None:
        return None


def make_config(tmp_path: Path) -> ClusterConfig:
    return build_config(
        {
            "cluster": {"data_dir": str(tmp_path), "secret": "test-secret", "name": "testcl"},
            "nodes": [
                {"id": "n1", "raft": "127.0.0.1:17001", "api": "127.0.0.1:17101"},
                {"id": "n2", "raft": "127.0.0.1:17002", "api": "127.0.0.1:17102"},
                {"id": "n3", "raft": "127.0.0.1:17003", "api": "127.0.0.1:17103"},
            ],
            # Nothing listens here: the gateway shows as down.
            "gateways": [{"id": "g1", "listen": "127.0.0.1:9"}],
        },
        tmp_path,
    )


@dataclass
class Console:
    client: TestClient[Any, Any]
    cluster: LedgerCluster
    clock: FakeClock
    db: Path
    config: ClusterConfig

    def audit_actions(self) -> list[tuple[str, str, str]]:
        conn = open_store(self.db)
        try:
            return [(r.operator, r.action, r.target) for r in reversed(audit.recent(conn, 500))]
        finally:
            conn.close()

    async def login(
        self, username: str = "alice", password: str = PASSWORD, *, next_path: str = "/"
    ) -> Any:
        page = await self.client.get(f"/login?next={next_path}")
        token = re.search(r'name="login_csrf" value="([^"]+)"', await page.text())
        assert token is not None
        return await self.client.post(
            "/login",
            data={
                "username": username,
                "password": password,
                "login_csrf": token.group(1),
                "next": next_path,
            },
            allow_redirects=False,
        )

    async def csrf(self) -> str:
        page = await self.client.get("/audit")
        m = re.search(r'<meta name="csrf-token" content="([^"]+)"', await page.text())
        assert m is not None
        return m.group(1)

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> Any:
        if csrf:
            data = {**data, "csrf_token": await self.csrf()}
        return await self.client.post(path, data=data, allow_redirects=False)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    cfg = make_config(tmp_path)
    db = tmp_path / "admin.db"
    conn = open_store(db)
    create_operator(conn, "alice", PASSWORD, ["operator", "pii"], at_ms=0, created_by="test")
    create_operator(conn, "viewer", PASSWORD, [], at_ms=0, created_by="test")
    conn.close()
    clock = FakeClock()
    cluster = LedgerCluster(clock)
    app = create_app(cfg, cluster=cluster, clock_ms=clock)
    client: TestClient[Any, Any] = TestClient(TestServer(app), cookie_jar=CookieJar(unsafe=True))
    await client.start_server()
    try:
        yield Console(client, cluster, clock, db, cfg)
    finally:
        await client.close()


async def signed_in(console: Console, username: str = "alice") -> Console:
    response = await console.login(username)
    assert response.status == 303
    return console


# -- nothing without a session ------------------------------------------------------------


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def test_anonymous_requests_to_every_route_are_refused(console: Console) -> None:
    public = {"/login", "/healthz", "/static/login.css"}
    checked = 0
    for resource in console.client.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or ""
        if "prefix" in info:  # the static files
            for name in ("console.js", "console.css"):
                response = await console.client.get(f"/static/{name}", allow_redirects=False)
                assert response.status == 303, name
                assert response.headers["Location"].startswith("/login")
                checked += 1
            continue
        for route in resource:
            if route.method == "HEAD" or (route.method == "GET" and path in public):
                continue
            if route.method == "POST" and path == "/login":
                continue
            url = concrete(path)
            response = await console.client.request(route.method, url, allow_redirects=False)
            if url.startswith("/api/") or url == "/metrics":
                assert response.status == 401, url
                assert response.content_type == "application/problem+json"
                body = await response.json()
                assert body["type"] == "https://flashsale.dev/problems/unauthenticated"
            else:
                assert response.status == 303, (route.method, url)
                assert response.headers["Location"].startswith("/login")
            checked += 1
    assert checked >= 18


async def test_public_routes_are_only_the_sign_in_page_its_css_and_health(
    console: Console,
) -> None:
    for path in ("/login", "/static/login.css", "/healthz"):
        response = await console.client.get(path)
        assert response.status == 200, path
    page = await (await console.client.get("/login")).text()
    assert "console.js" not in page and "csrf-token" not in page


async def test_anonymous_page_redirect_remembers_the_page_but_not_foreign_sites(
    console: Console,
) -> None:
    response = await console.client.get("/sale?x=1", allow_redirects=False)
    location = URL(response.headers["Location"])
    assert location.path == "/login" and location.query["next"] == "/sale?x=1"
    signed = await console.login(next_path="//evil.example/")
    assert signed.status == 303 and signed.headers["Location"] == "/"


async def test_metrics_need_a_session_or_the_internal_token(console: Console) -> None:
    token = internal_token("test-secret")
    response = await console.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    assert "flashsale_admin_logins" in await response.text()
    wrong = await console.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401


# -- signing in ---------------------------------------------------------------------------


async def test_wrong_password_is_refused_and_audited(console: Console) -> None:
    response = await console.login(password="not the password")
    assert response.status == 401
    assert "Wrong username or password" in await response.text()
    unknown = await console.login(username="mallory")
    assert unknown.status == 401
    assert (await console.client.get("/cluster", allow_redirects=False)).status == 303
    actions = console.audit_actions()
    assert ("alice", "login.failed", "") in actions
    assert ("mallory", "login.failed", "") in actions


async def test_sign_in_sets_a_protected_session_cookie(console: Console) -> None:
    response = await console.login()
    assert response.status == 303
    cookie = response.cookies["fs_admin"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert int(cookie["max-age"]) > 0
    page = await console.client.get("/cluster")
    assert page.status == 200
    assert "alice" in await page.text()
    assert ("alice", "login.ok", "") in console.audit_actions()


async def test_sign_in_page_fetched_twice_keeps_one_form_token(console: Console) -> None:
    # Browsers fetch the page again behind the operator's back (a favicon redirected to
    # it, a second tab); the first form must still work.
    first = await console.client.get("/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', await first.text())
    await console.client.get("/login?next=/favicon.ico")
    assert token is not None
    signed = await console.client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "login_csrf": token.group(1)},
        allow_redirects=False,
    )
    assert signed.status == 303


async def test_sign_in_form_without_its_csrf_token_is_refused(console: Console) -> None:
    response = await console.client.post(
        "/login", data={"username": "alice", "password": PASSWORD}, allow_redirects=False
    )
    assert response.status == 403
    assert "fs_admin" not in response.cookies


async def test_repeated_failures_lock_the_username_for_a_while(console: Console) -> None:
    for _ in range(LOGIN_FAILURES_PER_USERNAME):
        assert (await console.login(password="guess guess guess")).status == 401
    locked = await console.login()  # even the right password waits
    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert ("alice", "login.limited", "") in console.audit_actions()
    assert (await console.login(username="viewer")).status == 303


async def test_session_expires_after_idle_time(console: Console) -> None:
    await signed_in(console)
    assert (await console.client.get("/sale", allow_redirects=False)).status == 200
    console.clock.now_ms += SESSION_IDLE_MS + 1
    assert (await console.client.get("/sale", allow_redirects=False)).status == 303
    api = await console.client.get("/api/cluster")
    assert api.status == 401


async def test_sign_out_ends_the_session_for_good(console: Console) -> None:
    await signed_in(console)
    token = console.client.session.cookie_jar.filter_cookies(console.client.make_url("/"))[
        "fs_admin"
    ].value
    response = await console.post("/logout", {})
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert (await console.client.get("/cluster", allow_redirects=False)).status == 303
    # The old token, replayed, is worth nothing.
    replay = await console.client.get(
        "/api/cluster", headers={"Cookie": f"fs_admin={token}"}, allow_redirects=False
    )
    assert replay.status == 401
    assert ("alice", "logout", "") in console.audit_actions()


# -- CSRF and origin ----------------------------------------------------------------------


async def test_post_without_csrf_token_is_refused(console: Console) -> None:
    await signed_in(console)
    form = {"product_id": "p1", "name": "P", "price": "1.00", "total_stock": "5",
            "hold_ttl_s": "60"}  # fmt: skip
    missing = await console.post("/sale/products", form, csrf=False)
    assert missing.status == 403
    wrong = await console.post("/sale/products", {**form, "csrf_token": "forged"}, csrf=False)
    assert wrong.status == 403
    logout = await console.client.post("/logout", allow_redirects=False)
    assert logout.status == 403
    assert console.cluster.submitted == []  # nothing reached the cluster
    assert (await console.client.get("/sale")).status == 200  # still signed in
    assert ("alice", "write.refused", "/sale/products") in console.audit_actions()


async def test_csrf_token_in_header_is_accepted_and_cross_origin_is_refused(
    console: Console,
) -> None:
    await signed_in(console)
    csrf = await console.csrf()
    form = {"product_id": "p1", "name": "P", "price": "1.00", "total_stock": "5",
            "hold_ttl_s": "60", "key": "admin-h1"}  # fmt: skip
    foreign = await console.client.post(
        "/sale/products",
        data={**form, "csrf_token": csrf},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert foreign.status == 403
    opaque = await console.client.post(
        "/sale/products",
        data={**form, "csrf_token": csrf},
        headers={"Origin": "null"},
        allow_redirects=False,
    )
    assert opaque.status == 403
    ok = await console.client.post(
        "/sale/products", data=form, headers={"X-CSRF-Token": csrf}, allow_redirects=False
    )
    assert ok.status == 303


async def test_pages_carry_a_strict_content_security_policy(console: Console) -> None:
    await signed_in(console)
    response = await console.client.get("/sale")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script>" not in await response.text()  # no inline script anywhere


# -- the sale -----------------------------------------------------------------------------

NEW = {
    "product_id": "tee",
    "name": "T-shirt <b>bold</b>",
    "price": "19.99",
    "currency": "USD",
    "total_stock": "100",
    "opens_at": "",
    "closes_at": "",
    "per_user_limit": "2",
    "hold_ttl_s": "300",
}


async def create(console: Console, **overrides: str) -> Any:
    page = await console.client.get("/sale")
    key = re.search(r'name="key" value="([^"]+)"', await page.text())
    assert key is not None
    return await console.post("/sale/products", {**NEW, "key": key.group(1), **overrides})


async def test_operator_creates_a_product_with_an_exact_price(console: Console) -> None:
    await signed_in(console)
    response = await create(console)
    assert response.status == 303 and response.headers["Location"] == "/sale/products/tee"
    product = console.cluster.ledger.product("tee")
    assert product is not None
    assert (product.price_minor, product.total_stock, product.per_user_limit) == (1999, 100, 2)
    assert product.hold_ttl_ms == 300_000
    page = await console.client.get("/sale/products/tee")
    html = await page.text()
    assert "Created product tee." in html
    assert "T-shirt &lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html
    conn = open_store(console.db)
    row = audit.recent(conn, 50)[0]
    conn.close()
    assert (row.operator, row.action, row.target) == ("alice", "product.create", "tee")
    assert row.details["outcome"] == "applied"
    assert row.details["command"]["price_minor"] == 1999


async def test_bad_price_is_refused_before_reaching_the_cluster(console: Console) -> None:
    await signed_in(console)
    response = await create(console, price="19.999")
    assert response.status == 422
    assert "2 decimal places" in await response.text()
    assert console.cluster.submitted == []


async def test_same_form_submitted_twice_changes_the_sale_once(console: Console) -> None:
    await signed_in(console)
    await create(console)
    page = await console.client.get("/sale/products/tee")
    key = re.search(r'id="restock".*?name="key" value="([^"]+)"', await page.text(), re.S)
    assert key is not None
    for _ in range(2):
        response = await console.post(
            "/sale/products/tee/restock", {"quantity": "5", "key": key.group(1)}
        )
        assert response.status == 303
    product = console.cluster.ledger.product("tee")
    assert product is not None and product.total_stock == 105


async def test_ledger_refusal_is_shown_and_audited(console: Console) -> None:
    await signed_in(console)
    await create(console)
    again = await create(console)  # same product id, new key
    assert again.status == 409
    assert "already_exists" in await again.text()
    assert [a for a in console.audit_actions() if a[1] == "product.create"] == [
        ("alice", "product.create", "tee"),
        ("alice", "product.create", "tee"),
    ]


async def test_unknown_outcome_keeps_the_key_so_a_resubmit_is_safe(console: Console) -> None:
    await signed_in(console)
    console.cluster.fail_next_submit = True
    page = await console.client.get("/sale")
    key = re.search(r'name="key" value="([^"]+)"', await page.text())
    assert key is not None
    response = await console.post("/sale/products", {**NEW, "key": key.group(1)})
    assert response.status == 503
    html = await response.text()
    assert "may or may not have been applied" in html
    assert f'value="{key.group(1)}"' in html  # the same key, for a safe retry
    retry = await console.post("/sale/products", {**NEW, "key": key.group(1)})
    assert retry.status == 303
    assert len(console.cluster.ledger.products()) == 1


async def test_edit_restock_close_and_open(console: Console) -> None:
    await signed_in(console)
    await create(console)
    edit = await console.post(
        "/sale/products/tee",
        {"name": "Tee", "price": "5.50", "opens_at": "", "closes_at": "",
         "per_user_limit": "", "hold_ttl_s": "60"},
    )  # fmt: skip
    assert edit.status == 303
    product = console.cluster.ledger.product("tee")
    assert product is not None
    assert (product.name, product.price_minor, product.per_user_limit) == ("Tee", 550, None)
    assert product.hold_ttl_ms == 60_000
    assert (await console.post("/sale/products/tee/restock", {"quantity": "-10"})).status == 303
    closed = await console.post("/sale/products/tee/close", {})
    assert closed.status == 303
    product = console.cluster.ledger.product("tee")
    assert product is not None and product.total_stock == 90
    assert product.closes_at_ms == console.clock.now_ms
    page = await console.client.get("/sale/products/tee")
    assert 'data-k="state" class="state-closed">closed<' in await page.text()
    assert (await console.post("/sale/products/tee/open", {})).status == 303
    product = console.cluster.ledger.product("tee")
    assert product is not None and product.closes_at_ms is None
    actions = [a[1] for a in console.audit_actions()]
    for action in ("product.update", "product.restock", "sale.close", "sale.open"):
        assert action in actions


async def test_an_account_without_the_operator_right_may_look_but_not_change(
    console: Console,
) -> None:
    await signed_in(console)
    await create(console)
    await console.post("/logout", {})
    await signed_in(console, "viewer")
    page = await console.client.get("/sale/products/tee")
    assert page.status == 200 and 'id="restock"' not in await page.text()
    refused = await console.post("/sale/products/tee/restock", {"quantity": "5"})
    assert refused.status == 403
    product = console.cluster.ledger.product("tee")
    assert product is not None and product.total_stock == 100
    assert ("viewer", "denied", "tee") in console.audit_actions()


async def test_unknown_product_page_is_404(console: Console) -> None:
    await signed_in(console)
    assert (await console.client.get("/sale/products/nope")).status == 404
    api = await console.client.get("/api/nope")
    assert api.status == 404 and api.content_type == "application/problem+json"


# -- orders -------------------------------------------------------------------------------


async def place_order(console: Console, user: str) -> str:
    cluster = console.cluster
    await cluster.submit(
        [{"type": "reserve", "key": f"r-{user}", "user_id": user, "product_id": "tee",
          "quantity": 1}]
    )  # fmt: skip
    hold = cluster.ledger.open_cart_of(user)
    assert hold is not None
    # Sealed as the gateway seals: with the shopper's data key from the config's store.
    keys = KeyStore.open(console.config)
    try:
        sealed = Sealer(keys).seal(user, {"city": "Lyon", "email": "s@x.io"})
    finally:
        keys.close()
    answer = await cluster.submit(
        [{"type": "checkout", "key": f"c-{user}", "user_id": user, "cart_id": hold.cart_id,
          "payment_method": "card", "sealed_details": sealed}]
    )  # fmt: skip
    order_id = answer.results[0]["order_id"]
    await cluster.submit(
        [{"type": "record_payment", "key": f"p-{user}", "order_id": order_id,
          "outcome": "paid", "amount_minor": 1999, "provider": "acme", "transaction_id": "tx-9"}]
    )  # fmt: skip
    return str(order_id)


async def test_order_lookup_by_id_and_by_shopper_keeps_personal_data_sealed(
    console: Console,
) -> None:
    await signed_in(console)
    await create(console)
    order_id = await place_order(console, "shopper-7")
    page = await console.client.get(f"/orders?q={order_id}")
    html = await page.text()
    assert page.status == 200
    for text in ("completed", "paid", "19.99 USD", "acme", "tx-9", "shopper-7"):
        assert text in html
    assert "Lyon" not in html and "s@x.io" not in html

    async def found_by_shopper() -> bool:
        return order_id in await (await console.client.get("/orders?q=shopper-7")).text()

    await poll_until(found_by_shopper)
    searches = [a for a in console.audit_actions() if a[1] == "order.search"]
    assert ("alice", "order.search", order_id) in searches


async def test_unsealing_needs_the_pii_right_and_is_audited(console: Console) -> None:
    await signed_in(console)
    await create(console)
    order_id = await place_order(console, "shopper-8")
    unsealed = await console.post(f"/orders/{order_id}/unseal", {})
    assert unsealed.status == 200
    assert "Lyon" in await unsealed.text()
    assert ("alice", "pii.unseal", order_id) in console.audit_actions()
    await console.post("/logout", {})
    await signed_in(console, "viewer")
    page = await (await console.client.get(f"/orders?q={order_id}")).text()
    assert "Unseal" not in page and "sealed" in page
    refused = await console.post(f"/orders/{order_id}/unseal", {})
    assert refused.status == 403
    assert ("viewer", "denied", order_id) in console.audit_actions()


async def test_an_erased_shoppers_details_stay_closed_and_the_console_says_why(
    console: Console,
) -> None:
    await signed_in(console)
    await create(console)
    order_id = await place_order(console, "shopper-9")
    keys = KeyStore.open(console.config)
    try:
        keys.erase("shopper-9")
    finally:
        keys.close()
    refused = await console.post(f"/orders/{order_id}/unseal", {})
    html = await refused.text()
    assert refused.status == 422
    assert "is erased" in html and "Lyon" not in html
    assert ("alice", "pii.unseal", order_id) in console.audit_actions()


# -- cluster view and live updates ---------------------------------------------------------


async def poll_until(check: Any, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_cluster_api_shows_roles_lag_and_health(console: Console) -> None:
    await signed_in(console)

    async def ready() -> bool:
        return (await console.client.get("/api/cluster")).status == 200

    await poll_until(ready)
    snapshot = await (await console.client.get("/api/cluster")).json()
    nodes = {n["id"]: n for n in snapshot["nodes"]}
    assert snapshot["leader"] == "n1"
    assert (nodes["n1"]["role"], nodes["n1"]["lag"], nodes["n1"]["up"]) == ("leader", 0, True)
    assert (nodes["n2"]["role"], nodes["n2"]["lag"]) == ("follower", 2)
    assert (nodes["n3"]["up"], nodes["n3"]["role"]) == (False, "down")
    assert snapshot["gateways"][0]["up"] is False
    page = await (await console.client.get("/cluster")).text()
    assert 'data-node="n3" data-up="false"' in page


async def test_a_hung_node_shows_down_without_hiding_the_others(console: Console) -> None:
    await signed_in(console)
    console.cluster.hung.add("n2")

    async def n2_down() -> bool:
        answer = await console.client.get("/api/cluster")
        if answer.status != 200:
            return False
        nodes = {n["id"]: n for n in (await answer.json())["nodes"]}
        return nodes["n2"]["up"] is False

    await poll_until(n2_down)
    snapshot = await (await console.client.get("/api/cluster")).json()
    assert [n["up"] for n in snapshot["nodes"]] == [True, False, False]
    assert snapshot["leader"] == "n1"


async def read_event(stream: Any) -> tuple[str, dict[str, Any]]:
    name, data = "", ""
    while True:
        line = (await stream.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            return name, json.loads(data)


async def test_live_stream_pushes_stock_as_it_changes(console: Console) -> None:
    await signed_in(console)
    await create(console)
    response = await console.client.get("/api/live")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    name, first = await read_event(response.content)
    assert name == "snapshot" and "history" in first
    await console.cluster.submit(
        [{"type": "reserve", "key": "live-1", "user_id": "u1", "product_id": "tee",
          "quantity": 2}]
    )  # fmt: skip
    for _ in range(10):
        name, snap = await read_event(response.content)
        stock = {p["product_id"]: p for p in snap["products"]}
        if stock["tee"]["available"] == 98:
            break
    else:
        pytest.fail("the live stream never showed the reserved units")
    assert stock["tee"]["reserved"] == 2
    assert snap["sample"]["stock"]["tee"] == [98, 2, 0]
    response.close()


async def test_live_stream_ends_when_the_session_does(console: Console) -> None:
    await signed_in(console)
    response = await console.client.get("/api/live")
    await read_event(response.content)
    console.clock.now_ms += SESSION_IDLE_MS + 1
    for _ in range(5):
        name, _ = await read_event(response.content)
        if name == "session-ended":
            break
    else:
        pytest.fail("the stream outlived the session")
    response.close()


async def test_audit_page_lists_actions(console: Console) -> None:
    await signed_in(console)
    await create(console)
    html = await (await console.client.get("/audit")).text()
    assert "product.create" in html and "login.ok" in html


async def test_audit_page_shows_a_bounded_number_of_rows(console: Console) -> None:
    conn = open_store(console.db)
    for i in range(MAX_AUDIT_ROWS_SHOWN + 5):
        audit.record(conn, at_ms=i, operator="t", action="filler", target=str(i))
    conn.close()
    await signed_in(console)
    html = await (await console.client.get("/audit")).text()
    assert html.count("data-audit=") == MAX_AUDIT_ROWS_SHOWN
    assert ">login.ok<" in html  # the newest first


async def test_oversized_form_is_refused(console: Console) -> None:
    await signed_in(console)
    csrf = await console.csrf()
    response = await console.client.post(
        "/sale/products",
        data={"csrf_token": csrf, "name": "x" * (MAX_FORM_BYTES + 1)},
        headers={"X-CSRF-Token": csrf},
        allow_redirects=False,
    )
    assert response.status == 413
    assert console.cluster.submitted == []
