"""The console as a real process against a real cluster (nodes, gateway, console all
separate processes on loopback), over HTTP and in a real browser (Playwright driving
Debian's chromium). The browser test saves screenshots of the main pages to
docs/screenshots/."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, CookieJar

from pii.keystore import KeyStore
from pii.sealing import Sealer
from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.cluster

OPERATOR = "ops"
PASSWORD = "a long operator password"
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
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CONSOLE_START_TIMEOUT_S = 30.0
UI_TIMEOUT_MS = 20_000
# A function, not an expression: the console's CSP forbids eval, which Playwright uses for
# expressions.
CHART_HAS_POINTS = "() => Number(document.getElementById('chart').dataset.points) >= 5"


def sync_expect() -> Any:
    return pytest.importorskip("playwright.sync_api").expect


def make_operator(cluster: LocalCluster) -> None:
    """``python -m admin create-operator``, as an operator would run it first."""
    done = subprocess.run(
        [sys.executable, "-m", "admin", "--config", str(cluster.config_path),
         "create-operator", OPERATOR, "--rights", "operator,pii", "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=cluster.dir, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "created operator 'ops'" in done.stdout


def start_console(cluster: LocalCluster) -> subprocess.Popen[bytes]:
    """Run ``python -m admin --config PATH`` and wait for /healthz. The process joins the
    cluster's bookkeeping so the fixture's teardown SIGKILLs it with the rest."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(cluster.log_path("admin"), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "admin", "--config", str(cluster.config_path), "serve"],
            stdout=out, stderr=subprocess.STDOUT, cwd=cluster.dir, env=env,
        )  # fmt: skip
    cluster.procs["admin"] = proc
    cluster.started_pids.append(proc.pid)
    url = cluster.config.admin.listen.url + "/healthz"
    deadline = time.monotonic() + CONSOLE_START_TIMEOUT_S
    while True:
        assert proc.poll() is None, f"console exited {proc.returncode}\n{cluster.tails()}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        assert time.monotonic() < deadline, f"console not healthy\n{cluster.tails()}"
        time.sleep(0.05)


def started(local_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    cluster = local_cluster(n_nodes=3, gateways=1)
    cluster.start()
    make_operator(cluster)
    start_console(cluster)
    return cluster


def follower_of(cluster: LocalCluster) -> str:
    leader = cluster.wait_for_leader()
    return next(n for n in cluster.node_ids if n != leader)


def reserve(cluster: LocalCluster, product_id: str, user: str, quantity: int) -> dict[str, Any]:
    body = cluster.submit(
        [{"type": "reserve", "key": f"sell-{user}", "user_id": user, "product_id": product_id,
          "quantity": quantity}]
    )  # fmt: skip
    result: dict[str, Any] = body["results"][0]
    assert result["ok"], body
    return result


def seal(cluster: LocalCluster, user: str, details: dict[str, Any]) -> str:
    """The details sealed as the gateway seals them: with the shopper's data key, kept in
    the cluster's store, which the console opens."""
    keys = KeyStore.open(cluster.config)
    try:
        return Sealer(keys).seal(user, details)
    finally:
        keys.close()


def buy(cluster: LocalCluster, user: str, cart_id: str, sealed: str = "") -> dict[str, Any]:
    """Check the cart out and pay the order, as the gateway would record it."""
    placed: dict[str, Any] = cluster.submit(
        [{"type": "checkout", "key": f"co-{user}", "user_id": user, "cart_id": cart_id,
          "payment_method": "card", "sealed_details": sealed}]
    )["results"][0]  # fmt: skip
    assert placed["ok"], placed
    paid = cluster.submit(
        [{"type": "record_payment", "key": f"pay-{user}", "order_id": placed["order_id"],
          "outcome": "paid", "amount_minor": placed["amount_minor"], "provider": "testpay",
          "transaction_id": f"tx-{user}"}]
    )["results"][0]  # fmt: skip
    assert paid["ok"], paid
    return placed


def browse(cluster: LocalCluster, product_id: str, times: int) -> None:
    """Shopper reads through the gateway, so it has a request rate to show."""
    url = f"{cluster.config.gateways[0].listen.url}/inventory/{product_id}"
    for _ in range(times):
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            assert resp.status == 200


# -- over HTTP --------------------------------------------------------------------------------


async def read_snapshot(stream: Any) -> dict[str, Any]:
    name, data = "", ""
    while True:
        line = (await stream.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name == "snapshot":
            return dict(json.loads(data))


async def test_console_runs_the_sale_of_a_real_cluster(
    local_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = started(local_cluster)
    base = cluster.config.admin.listen.url
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        login_page = await (await http.get(f"{base}/login")).text()
        login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', login_page)
        assert login_csrf is not None
        signed = await http.post(
            f"{base}/login",
            data={"username": OPERATOR, "password": PASSWORD, "login_csrf": login_csrf.group(1)},
            allow_redirects=False,
        )
        assert signed.status == 303

        sale = await (await http.get(f"{base}/sale")).text()
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', sale)
        key = re.search(r'name="key" value="([^"]+)"', sale)
        assert csrf is not None and key is not None
        form = {"csrf_token": csrf.group(1), "key": key.group(1), "product_id": "lamp",
                "name": "Lamp", "price": "49.90", "currency": "EUR", "total_stock": "50",
                "per_user_limit": "", "hold_ttl_s": "120"}  # fmt: skip
        created = await http.post(f"{base}/sale/products", data=form, allow_redirects=False)
        assert created.status == 303, await created.text()
        product = cluster.get(cluster.wait_for_leader(), "/v1/products/lamp")["product"]
        assert (product["price_minor"], product["currency"], product["total_stock"]) == (
            4990, "EUR", 50,
        )  # fmt: skip

        live = await http.get(f"{base}/api/live")
        first = await read_snapshot(live.content)
        assert first["leader"] is not None
        reserve(cluster, "lamp", "buyer-1", 3)
        for _ in range(30):
            snap = await read_snapshot(live.content)
            lamp = next((p for p in snap["products"] if p["product_id"] == "lamp"), None)
            if lamp is not None and lamp["available"] == 47:
                break
        else:
            pytest.fail("the live stream never showed the sold units")
        assert lamp["reserved"] == 3
        assert all(n["up"] for n in snap["nodes"])
        assert snap["gateways"][0]["up"] is True

        victim = follower_of(cluster)
        cluster.kill_node(victim)
        for _ in range(30):
            snap = await read_snapshot(live.content)
            node = next(n for n in snap["nodes"] if n["id"] == victim)
            if not node["up"]:
                break
        else:
            pytest.fail(f"{victim} never showed as down")

        # SIGTERM with a live stream open: the console still stops cleanly and promptly.
        console = cluster.procs["admin"]
        console.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(console.wait, 20)
        assert code == 0, cluster.tails()
        live.close()


# -- in a browser -----------------------------------------------------------------------------


def test_operator_runs_the_sale_in_a_browser(local_cluster: Callable[..., LocalCluster]) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    cluster = started(local_cluster)
    base = cluster.config.admin.listen.url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            drive_the_console(page, cluster, base)
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def drive_the_console(page: Any, cluster: LocalCluster, base: str) -> None:
    # Anonymous: the console sends the browser to sign in.
    page.goto(f"{base}/cluster")
    assert page.url.startswith(f"{base}/login")
    shot(page, "login")
    page.fill("#username", OPERATOR)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_url(f"{base}/cluster")
    page.wait_for_selector('#nodes tr[data-up="true"][data-role="leader"]')
    expect = sync_expect()
    expect(page.locator('#nodes tr[data-up="true"]')).to_have_count(3)
    page.wait_for_selector('#live-status[data-state="live"]')

    # Create a product.
    page.click("#nav-sale")
    page.fill("#f-product_id", "sneaker")
    page.fill("#f-name", "Limited sneaker")
    page.fill("#f-price", "129.00")
    page.fill("#f-total_stock", "200")
    page.fill("#f-per_user_limit", "5")
    page.click("#create-submit")
    page.wait_for_url(f"{base}/sale/products/sneaker")
    assert "Created product sneaker." in page.inner_text("body")
    available = 'tr[data-product="sneaker"] td[data-k="available"]'
    assert page.inner_text(available) == "200"

    # Sell through the cluster, over several seconds: holds, then paid orders. The page
    # follows without reloading, and the chart moves.
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate("window.__noReload = true")
    held, sold, first_buyer = 0, 0, ""
    for round_ in range(6):
        for buyer in range(4):
            user = f"b{round_}-{buyer}"
            quantity = 1 + (round_ + buyer) % 4
            hold = reserve(cluster, "sneaker", user, quantity)
            if buyer % 2 == 0:
                sealed = seal(cluster, user, {"address_line1": "1 Rue Haute", "city": "Lyon",
                                              "country": "FR"})  # fmt: skip
                buy(cluster, user, hold["cart_id"], sealed)
                sold += quantity
                first_buyer = first_buyer or user
            else:
                held += quantity
        browse(cluster, "sneaker", 25)
        expect(page.locator(available)).to_have_text(str(200 - sold - held))
        time.sleep(1.0)  # spread the sale over seconds so the chart has a slope to show
    assert page.evaluate("window.__noReload") is True
    page.wait_for_function(CHART_HAS_POINTS)
    expect(page.locator('tr[data-product="sneaker"] td[data-k="reserved"]')).to_have_text(str(held))
    expect(page.locator('tr[data-product="sneaker"] td[data-k="sold"]')).to_have_text(str(sold))
    shot(page, "product")
    page.click("#nav-sale")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.wait_for_function(CHART_HAS_POINTS)
    shot(page, "sale")

    # Orders: found by shopper; the shopper's details unsealed only on demand.
    page.click("#nav-orders")
    page.fill("#q", first_buyer)
    page.click("#search-submit")
    row = "#orders tbody tr"
    expect(page.locator(row)).to_have_count(1)
    assert page.inner_text(f'{row} td[data-k="status"]') == "completed"
    assert page.inner_text(f'{row} td[data-k="transaction_id"]') == f"tx-{first_buyer}"
    assert "Lyon" not in page.inner_text("body")
    page.click(f"{row} form.unseal button")
    page.wait_for_selector("dl.unsealed")
    assert "Lyon" in page.inner_text("body")
    shot(page, "orders")

    # A form posted without its CSRF token is refused, and changes nothing.
    page.goto(f"{base}/sale/products/sneaker")
    page.evaluate("document.querySelector('#restock input[name=csrf_token]').remove()")
    page.fill("#f-quantity", "7")
    page.click("#restock-submit")
    expect(page.locator("h1")).to_contain_text("CSRF token missing")
    leader = cluster.wait_for_leader()
    assert cluster.get(leader, "/v1/products/sneaker")["product"]["total_stock"] == 200

    # A node goes down: the cluster view shows it, live.
    page.goto(f"{base}/cluster")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate("window.__noReload = true")
    victim = follower_of(cluster)
    cluster.kill_node(victim)
    page.wait_for_selector(f'#nodes tr[data-node="{victim}"][data-up="false"]')
    assert page.inner_text(f'#nodes tr[data-node="{victim}"] td[data-k="health"]') == "down"
    assert page.evaluate("window.__noReload") is True
    shot(page, "cluster")

    page.click("#nav-audit")
    assert "pii.unseal" in page.inner_text("#audit")
    shot(page, "audit")

    # Sign out: the console is closed again.
    page.click("#sign-out")
    page.wait_for_url(re.compile(r".*/login.*"))
    page.goto(f"{base}/sale")
    assert page.url.startswith(f"{base}/login")
    assert page.request.get(f"{base}/api/cluster").status == 401
