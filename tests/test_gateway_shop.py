"""The shop front: the page and its headers, guest sessions, the live stock stream (fast,
in-process, on the real gateway application), and a shopper buying through the page in a
real browser against a real 3-node cluster and gateway (Playwright driving Debian's
chromium), with the bot defences on (waiting room, proof of work, limits, heuristics: as
``make run`` has them) and off, which saves docs/screenshots/shop.png."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from cluster.config import ConfigError, build_config, load_config
from gateway.guest import GUEST_PREFIX, GUEST_TOKEN_TTL_S
from gateway.identity import issue_token, verify_token
from gateway.inventory_stream import MAX_STREAM_PRODUCTS, inventory_update, sse_frame
from gateway.problems import PROBLEM_BASE
from gateway.server import create_app
from gateway.shop import ASSET_TYPES, SHOP, SHOP_CSP
from tests.support.cluster import LocalCluster, free_ports
from tests.test_gateway_api import InProcessCluster, Shop

SECRET = "shop-test-secret-0123456789abcdef0123456789"
# Production mode refuses the public development key for personal data.
PII = {"master_keys": {"k1": base64.b64encode(bytes(range(32))).decode()}, "active_key": "k1"}
STREAM_TIMEOUT_S = 10.0


def _config(tmp_path: Path, *, mode: str = "development", **gateway: Any) -> Any:
    return build_config(
        {
            "cluster": {"secret": SECRET, "mode": mode},
            "pii": PII,
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [{"id": "g1", "listen": "127.0.0.1:3"}],
            "gateway": {"feed_wait_ms": 100, **gateway},
            # The in-process clients here are trusted; the browser test turns defences on.
            "bots": {"enabled": False},
        },
        tmp_path,
    )


async def _client(tmp_path: Path, **kwargs: Any) -> tuple[TestClient[Any, Any], Shop]:
    config = _config(tmp_path, **kwargs)
    cluster = InProcessCluster(config)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, "g1", cluster=cluster)))
    await client.start_server()
    shop = Shop(client, cluster)
    return client, shop


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    client, shop = await _client(tmp_path)
    try:
        yield shop
    finally:
        await client.close()


def _problem_type(body: dict[str, Any]) -> str:
    return str(body.get("type", "")).removeprefix(PROBLEM_BASE)


# -- guest sessions ---------------------------------------------------------------------


async def test_a_guest_session_is_a_fresh_shopper_who_can_shop(shop: Shop) -> None:
    shop.create("tee", 5)
    first = await shop.client.post("/session/guest")
    second = await shop.client.post("/session/guest")
    assert (first.status, second.status) == (201, 201)
    assert first.headers["Cache-Control"] == "no-store"
    a, b = await first.json(), await second.json()
    assert a["user_id"].startswith(GUEST_PREFIX) and a["user_id"] != b["user_id"]
    # Letters only: a digit run could pass the Luhn check and be refused as a card number.
    assert a["user_id"][len(GUEST_PREFIX) :].isalpha()
    assert verify_token(SECRET, a["token"]) == a["user_id"]
    assert a["token_type"] == "Bearer" and a["expires_at"].endswith("Z")
    assert 0 < a["expires_at_ms"] - a["now_ms"] <= GUEST_TOKEN_TTL_S * 1000

    resp = await shop.client.post(
        "/add-to-cart",
        json={"user_id": a["user_id"], "product_id": "tee", "quantity": 1},
        headers={"Authorization": f"Bearer {a['token']}"},
    )
    assert resp.status == 200, await resp.text()
    # The other guest cannot see the first one's cart.
    cart_id = (await resp.json())["cart_id"]
    resp = await shop.client.get(
        f"/cart/{cart_id}", headers={"Authorization": f"Bearer {b['token']}"}
    )
    assert resp.status == 404


@pytest.mark.parametrize(
    ("mode", "setting", "allowed"),
    [
        ("production", None, False),
        ("production", False, False),
        ("production", True, True),  # the operator's explicit choice (a demo, a load test)
        ("development", None, True),
        ("development", False, False),
    ],
)
async def test_guest_sessions_follow_mode_and_setting(
    tmp_path: Path, mode: str, setting: bool | None, allowed: bool
) -> None:
    extra = {} if setting is None else {"guest_sessions": setting}
    client, _ = await _client(tmp_path, mode=mode, **extra)
    try:
        resp = await client.post("/session/guest")
        body = await resp.json(content_type=None)
        if allowed:
            assert resp.status == 201 and verify_token(SECRET, body["token"]) == body["user_id"]
        else:
            assert resp.status == 403
            assert resp.content_type == "application/problem+json"
            assert _problem_type(body) == "guest-sessions-disabled"
            assert "token" not in body
    finally:
        await client.close()


def test_guest_sessions_setting_is_read_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(
        '[cluster]\nsecret = "s"\n[[nodes]]\nid = "n1"\nraft = "127.0.0.1:1"\n'
        'api = "127.0.0.1:2"\n[gateway]\nguest_sessions = true\n',
        encoding="utf-8",
    )
    assert load_config(path, env={}).gateway_settings.guest_sessions is True
    env = {"FLASHSALE_GATEWAY__GUEST_SESSIONS": "false"}
    assert load_config(path, env=env).gateway_settings.guest_sessions is False
    assert _config(tmp_path).gateway_settings.guest_sessions is None
    with pytest.raises(ConfigError, match="guest_sessions"):
        _config(tmp_path, guest_sessions="sometimes")


# -- the page and its assets ------------------------------------------------------------


async def test_the_page_is_served_with_a_strict_policy(shop: Shop) -> None:
    resp = await shop.client.get("/")
    page = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == SHOP_CSP
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                      "connect-src 'self'", "frame-ancestors 'none'",
                      "require-trusted-types-for 'script'"):
        assert directive in SHOP_CSP
    assert "unsafe-inline" not in SHOP_CSP and "unsafe-eval" not in SHOP_CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    # Nothing inline that the policy would block, nothing from another origin.
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page) is None
    assert re.search(r"\sstyle=|\son[a-z]+=", page) is None
    assert re.search(r"(src|href)=\"(https?:)?//", page) is None

    # Every file the page refers to is served by the gateway, under the same policy.
    referenced = set(re.findall(r"(?:src|href)=\"/static/([^\"]+)\"", page))
    assert referenced == set(ASSET_TYPES)
    for name in referenced:
        asset = await shop.client.get(f"/static/{name}")
        assert asset.status == 200, name
        assert asset.headers["Content-Type"] == ASSET_TYPES[name]
        assert asset.headers["Content-Security-Policy"] == SHOP_CSP
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        again = await shop.client.get(
            f"/static/{name}", headers={"If-None-Match": asset.headers["ETag"]}
        )
        assert again.status == 304


async def test_only_the_shop_files_are_served(shop: Shop) -> None:
    for path in ("/static/shop.py", "/static/..%2Fshop.py", "/static/%2E%2E%2Fserver.py",
                 "/static/shop.html", "/static/"):
        resp = await shop.client.get(path)
        assert resp.status == 404, path
        assert resp.content_type == "application/problem+json"


def test_the_script_never_writes_markup() -> None:
    script = (Path(__file__).parent.parent / "gateway" / "static" / "shop.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute('style'", "javascript:"):
        assert sink not in script, sink
    assert "textContent" in script


# -- the live stock stream --------------------------------------------------------------


def test_an_sse_frame_is_one_event_whatever_the_data_holds() -> None:
    frame = sse_frame("inventory", {"name": "two\nlines\r\n\ndata: forged"}, event_id=7)
    text = frame.decode()
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    assert text.startswith("event: inventory\nid: 7\ndata: {")
    assert json.loads(text.split("data: ", 1)[1]) == {"name": "two\nlines\r\n\ndata: forged"}


def test_a_stock_update_holds_known_products_only_and_a_bounded_number() -> None:
    known = [{"product_id": f"p{i}", "name": f"P{i}", "price_minor": 100, "currency": "USD",
              "available": i, "total_stock": 500} for i in range(MAX_STREAM_PRODUCTS + 5)]
    update = inventory_update([{"product_id": "bare", "available": 3}, *known], 42)
    assert update["ledger_index"] == 42
    assert len(update["products"]) == MAX_STREAM_PRODUCTS
    assert update["products"][0]["product_id"] == "p0"
    assert update["products"][1]["available_quantity"] == 1
    assert update["products"][1]["price"] == "1.00"


async def _next_event(resp: ClientResponse) -> dict[str, Any]:
    """The data of the next ``inventory`` event of a stream."""
    name = ""
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        while True:
            line = (await resp.content.readline()).decode()
            if not line:
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "inventory":
                return dict(json.loads(line[6:]))


async def test_the_stream_shows_stock_as_it_moves(shop: Shop) -> None:
    shop.create("tee", 5)
    await shop.synced()
    resp = await shop.client.get("/events/inventory")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = await _next_event(resp)
    assert [(p["product_id"], p["available_quantity"]) for p in first["products"]] == [("tee", 5)]

    held = await shop.client.post(
        "/add-to-cart", json={"user_id": "alice", "product_id": "tee", "quantity": 2},
        headers={"Authorization": f"Bearer {issue_token(SECRET, 'alice', 600)}"},
    )
    assert held.status == 200, await held.text()
    while True:
        update = await _next_event(resp)
        if update["products"][0]["available_quantity"] == 3:
            break
    assert update["ledger_index"] > first["ledger_index"]
    resp.close()


async def test_streams_are_bounded_and_end_at_shutdown(tmp_path: Path) -> None:
    client, shop = await _client(tmp_path)
    try:
        shop.create("tee", 5)
        await shop.synced()
        app = client.app
        assert app is not None
        app[SHOP].broadcast.max_streams = 1
        stream = await client.get("/events/inventory")
        await _next_event(stream)
        refused = await client.get("/events/inventory")
        assert refused.status == 503 and refused.headers["Retry-After"]
        assert _problem_type(await refused.json(content_type=None)) == "overloaded"
        metrics = await (await client.get("/metrics")).text()
        assert "flashsale_gateway_stock_streams 1.0" in metrics
        # Shutdown ends the open stream instead of waiting for the client to leave.
        await client.server.close()
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            rest = await stream.content.read()
        assert stream.content.at_eof() and b"event:" not in rest
    finally:
        await client.close()


# -- a shopper in a real browser against a real cluster ----------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "shop.png"
QUEUE_SCREENSHOT = SCREENSHOT.with_name("shop-queue.png")
UI_TIMEOUT_MS = 20_000
START_TIMEOUT_S = 30.0
HOLD_TTL_MS = 3_000  # the hold the browser test lets run out
PAYMENTS_AVAILABLE = importlib.util.find_spec("payments.sandbox") is not None


def _spawn(cluster: LocalCluster, proc_id: str, argv: list[str]) -> None:
    """A process in the cluster's bookkeeping: the fixture's teardown SIGKILLs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(cluster.log_path(proc_id), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=cluster.dir,
            env=env,
        )  # fmt: skip
    cluster.procs[proc_id] = proc
    cluster.started_pids.append(proc.pid)


def _wait_healthy(cluster: LocalCluster, proc_id: str, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        proc = cluster.procs[proc_id]
        assert proc.poll() is None, f"{proc_id} exited {proc.returncode}\n{cluster.tails()}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{proc_id} not healthy\n{cluster.tails()}"
        time.sleep(0.05)


def _start_shop(cluster: LocalCluster) -> str:
    """Nodes, the payments sandbox (when the payments package is there) and the gateway;
    the shop's URL."""
    gateway = cluster.config.gateway("g1").listen.url
    if PAYMENTS_AVAILABLE:
        (port,) = free_ports(1)
        sandbox = f"http://127.0.0.1:{port}"
        with open(cluster.config_path, "a", encoding="utf-8") as toml:
            toml.write(
                f'\n[payments]\nproviders = ["stripe"]\nstripe_api_base = "{sandbox}"\n'
                f'sandbox_listen = "127.0.0.1:{port}"\nsandbox_latency_ms = 0\n'
                f'sandbox_webhook_url = "{gateway}/webhooks"\n'
            )
        _spawn(cluster, "sandbox", ["-m", "cli", "payments-sandbox", "--config",
                                    str(cluster.config_path)])
        _wait_healthy(cluster, "sandbox", sandbox + "/healthz")
    for node_id in cluster.node_ids:
        cluster.start_node(node_id, wait=False)
    for node_id in cluster.node_ids:
        cluster.wait_healthy(node_id)
    cluster.wait_for_leader()
    cluster.start_gateway("g1")
    _wait_healthy(cluster, "g1", gateway + "/readyz")
    return gateway


def _create(cluster: LocalCluster, pid: str, name: str, stock: int, **extra: Any) -> None:
    answer = cluster.submit([{"type": "create_product", "key": f"create-{pid}",
                              "product_id": pid, "name": name, "price_minor": 2500,
                              "total_stock": stock, **extra}])  # fmt: skip
    assert answer["results"][0]["ok"], answer


def _reserve(cluster: LocalCluster, pid: str, user: str, quantity: int) -> None:
    answer = cluster.submit([{"type": "reserve", "key": f"r-{user}", "user_id": user,
                              "product_id": pid, "quantity": quantity}])  # fmt: skip
    assert answer["results"][0]["ok"], answer


# The page waits its turn: two tickets are taken before it, and one is let in every 2 s.
QUEUE_RATE = 0.5
BOTS_ON = {"enabled": True, "admission_rate": QUEUE_RATE}


def _take_ticket(base: str, secret: str, user: str) -> dict[str, Any]:
    # A place in line is personal: each ticket is taken under its shopper's token.
    headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)",
               "Authorization": f"Bearer {issue_token(secret, user, 600)}"}  # fmt: skip
    request = urllib.request.Request(base + "/queue", method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=5.0) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.cluster
@pytest.mark.parametrize("bots", ["on", "off"])
def test_a_shopper_buys_through_the_page(
    local_cluster: Callable[..., LocalCluster], bots: str
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    cluster = local_cluster(n_nodes=3, gateways=1, bots=BOTS_ON if bots == "on" else None)
    base = _start_shop(cluster)
    _create(cluster, "tee", "Flash tee", 20, per_user_limit=3)
    _create(cluster, "cap", "Midnight cap", 50,
            opens_at_ms=int(time.time() * 1000) + 3 * 3600_000)  # fmt: skip
    _create(cluster, "pin", "Enamel pin", 1)
    _reserve(cluster, "pin", "early-bird", 1)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(UI_TIMEOUT_MS)
            if bots == "on":
                ahead = [_take_ticket(base, cluster.secret, f"ahead{i}") for i in range(2)]
                assert ahead[0]["admitted"] and not ahead[1]["admitted"]
                wait_in_line(page, sync_api.expect, base)
            shop_in_the_browser(page, sync_api.expect, cluster, base)
            if bots == "on":
                # A person's pace, even clicking fast: nothing of the page was refused.
                with urllib.request.urlopen(base + "/metrics", timeout=5.0) as resp:
                    metrics = resp.read().decode()
                refused = re.findall(
                    r'bot_decisions_total\{decision="(blocked|limited|challenged)"', metrics
                )
                assert refused == [], metrics
        finally:
            browser.close()


def wait_in_line(page: Any, expect: Any, base: str) -> None:
    """The page shows its place in line, then lets the shopper in by itself."""
    page.goto(base + "/")
    expect(page.locator("#queue")).to_be_visible()
    expect(page.locator("#queue-position")).to_have_text(re.compile(r"^[12]$"))
    expect(page.locator('article[data-product="tee"] .add')).to_have_text("Waiting in line")
    expect(page.locator('article[data-product="tee"] .add')).to_be_disabled()
    page.screenshot(path=str(QUEUE_SCREENSHOT), full_page=True)
    expect(page.locator("#queue")).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-queue", "admitted")


def shop_in_the_browser(page: Any, expect: Any, cluster: LocalCluster, base: str) -> None:
    page_errors: list[str] = []
    policy_violations: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: policy_violations.append(msg.text)
        if re.search(r"Content Security Policy|Trusted Type", msg.text)
        else None,
    )
    page.goto(base + "/")
    page.wait_for_selector('body[data-ready="true"]')
    expect(page.locator("#shopper")).to_contain_text(f"Shopping as {GUEST_PREFIX}")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")

    tee = 'article[data-product="tee"]'
    expect(page.locator(f"{tee} .name")).to_have_text("Flash tee")
    expect(page.locator(f"{tee} .price")).to_have_text("$25.00")
    expect(page.locator(f"{tee} .available")).to_have_text("20")
    expect(page.locator(tee)).to_have_attribute("data-state", "open")
    cap = 'article[data-product="cap"]'
    expect(page.locator(cap)).to_have_attribute("data-state", "upcoming")
    expect(page.locator(f"{cap} .window")).to_contain_text("Opens in 2:59:")
    expect(page.locator(f"{cap} .add")).to_be_disabled()
    pin = 'article[data-product="pin"]'
    expect(page.locator(pin)).to_have_attribute("data-state", "sold-out")
    expect(page.locator(f"{pin} .add")).to_have_text("Sold out")

    # Two tees into the cart: the hold's timer runs and the stock falls, live.
    page.select_option(f"{tee} .qty", "2")
    page.click(f"{tee} .add")
    item = '#cart-items li[data-product="tee"]'
    expect(page.locator(item)).to_have_attribute("data-status", "active")
    expect(page.locator(f"{item} .timer")).to_contain_text("held for")
    expect(page.locator("#message")).to_have_attribute("data-kind", "held")
    expect(page.locator(f"{tee} .available")).to_have_text("18")
    # Another shopper buys elsewhere: this page follows without a reload.
    _reserve(cluster, "tee", "someone-else", 1)
    expect(page.locator(f"{tee} .available")).to_have_text("17")

    # Over the per-shopper limit (3): the leader refuses and the page says why.
    page.click(f"{tee} .add")
    expect(page.locator("#message")).to_have_attribute("data-kind", "limit-reached")
    expect(page.locator("#message")).to_contain_text("Limit reached")
    expect(page.locator(f"{tee} .available")).to_have_text("17")

    # Checkout with a shipping address: an order waiting for payment.
    page.fill("#ship-name", "Ada Lovelace")
    page.fill("#ship-line1", "12 Analytical Row")
    page.fill("#ship-city", "London")
    page.fill("#ship-postal", "NW1 2DB")
    page.fill("#ship-country", "gb")
    page.click("#checkout")
    expect(page.locator("#order")).to_have_attribute("data-status", "pending")
    expect(page.locator("#order-amount")).to_have_text("$50.00")
    expect(page.locator("#message")).to_have_attribute("data-kind", "ordered")
    expect(page.locator("#checkout-form")).to_be_hidden()
    order_id = page.inner_text("#order-id")
    leader = cluster.wait_for_leader()
    order = cluster.get(leader, f"/v1/orders/{order_id}")["order"]
    assert (order["user_id"], order["amount_minor"]) == (
        page.inner_text("#shopper").removeprefix("Shopping as "), 5000)

    # Pay with the test card.
    page.click("#pay")
    if PAYMENTS_AVAILABLE:
        expect(page.locator("#order")).to_have_attribute("data-status", "completed")
        expect(page.locator("#message")).to_have_attribute("data-kind", "paid")
        paid = cluster.get(leader, f"/v1/orders/{order_id}")["order"]
        assert paid["payment_status"] == "paid"
        sold = cluster.get(leader, "/v1/products/tee")["product"]["sold"]
        assert sold == 2
    else:
        expect(page.locator("#message")).to_have_attribute(
            "data-kind", re.compile("payment-missing|payments-unavailable"))
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A product put on sale now appears without a reload; a hold left to run out says so,
    # and its unit is back on sale.
    _create(cluster, "flash", "Flash socks", 5, hold_ttl_ms=HOLD_TTL_MS)
    socks = 'article[data-product="flash"]'
    expect(page.locator(f"{socks} .available")).to_have_text("5")
    page.click(f"{socks} .add")
    item = '#cart-items li[data-product="flash"]'
    expect(page.locator(item)).to_have_attribute("data-status", "active")
    expect(page.locator(f"{socks} .available")).to_have_text("4")
    expect(page.locator(item)).to_have_attribute("data-status", "expired")
    expect(page.locator("#message")).to_have_attribute("data-kind", "hold-expired")
    expect(page.locator("#message")).to_contain_text("Your hold expired")
    expect(page.locator(f"{socks} .available")).to_have_text("5")
    assert page_errors == [] and policy_violations == [], (page_errors, policy_violations)
