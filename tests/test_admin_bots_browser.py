"""The Bots and queue page end to end: a real cluster, a real gateway with its bot
defences on, the console as its own process, and an operator in a real browser
(Playwright driving Debian's chromium). Saves docs/screenshots/bots.png."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.cluster import LocalCluster
from tests.test_admin_live import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OPERATOR,
    PASSWORD,
    SCREENSHOTS,
    UI_TIMEOUT_MS,
    make_operator,
    start_console,
    sync_expect,
)

pytestmark = pytest.mark.cluster

# Small buckets, so that a short burst of shopper reads shows up as limited.
BOTS = {"enabled": True, "ip_rate": 2, "ip_burst": 5}
BLOCKED_IP = "203.0.113.7"
DIFFICULTY = 250_000
APPLY_TIMEOUT_S = 20.0


def gateway_doc(cluster: LocalCluster) -> dict[str, Any]:
    """What the gateway itself reports: GET /internal/bots with the internal token."""
    url = cluster.config.gateways[0].listen.url + "/internal/bots"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=5.0) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def wait_for(check: Callable[[], bool], what: str, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"never: {what}\n{cluster.tails()}"
        time.sleep(0.2)


def shop_reads(cluster: LocalCluster, times: int) -> None:
    """Shopper reads in a burst, past the per-IP bucket: some are limited (429)."""
    url = cluster.config.gateways[0].listen.url + "/inventory/lamp"
    for _ in range(times):
        try:
            with urllib.request.urlopen(url, timeout=5.0):
                pass
        except urllib.error.HTTPError:
            pass  # 404 (no such product), 429, 403: every one is counted


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=5.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_operator_tunes_the_bot_defences_in_a_browser(
    local_cluster: Callable[..., LocalCluster],
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    cluster = local_cluster(n_nodes=1, gateways=1, bots=BOTS)
    cluster.start()
    make_operator(cluster)
    start_console(cluster)
    base = cluster.config.admin.listen.url
    # Nothing of it without signing in.
    assert status_of(f"{base}/api/bots") == 401
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            drive(page, cluster, base)
        finally:
            browser.close()


def drive(page: Any, cluster: LocalCluster, base: str) -> None:
    expect = sync_expect()
    page.goto(f"{base}/bots")
    assert page.url.startswith(f"{base}/login")
    page.fill("#username", OPERATOR)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_url(f"{base}/bots")
    page.wait_for_selector('#bot-gateways tr[data-gateway="g1"][data-up="true"]')
    page.wait_for_selector('#live-status[data-state="live"]')
    assert page.get_attribute("#nav-bots", "class") == "current"

    # Shoppers' traffic shows up on the open page, live: no reload.
    page.evaluate("window.__noReload = true")
    shop_reads(cluster, 20)
    limited = '#bot-gateways tr[data-gateway="g1"] td[data-k="limited"]'
    page.wait_for_function(
        "() => Number(document.querySelector("
        '\'#bot-gateways tr[data-gateway="g1"] td[data-k="limited"]\').textContent) > 0'
    )
    assert gateway_doc(cluster)["counts"]["limited"] >= int(page.inner_text(limited)) > 0
    expect(page.locator('#bot-reasons tr[data-reason="limited/ip-rate"]')).to_have_count(1)
    assert page.evaluate("window.__noReload") is True

    # Raise the difficulty: applied on the gateway.
    page.fill("#f-challenge_difficulty", str(DIFFICULTY))
    page.click("#settings-submit")
    page.wait_for_url(f"{base}/bots")
    assert f"Set challenge_difficulty = {DIFFICULTY}: applied on g1." in page.inner_text("body")
    assert gateway_doc(cluster)["settings"]["challenge_difficulty"] == DIFFICULTY
    cell = '#bot-gateways tr[data-gateway="g1"] td[data-k="challenge_difficulty"]'
    expect(page.locator(cell)).to_have_text(str(DIFFICULTY))

    # Block an IP: on the gateway's list, and in the page's.
    page.select_option("#f-list", "block_ips")
    page.fill("#f-value", BLOCKED_IP)
    page.click("#list-add-submit")
    page.wait_for_url(f"{base}/bots")
    assert f"Added {BLOCKED_IP} to block_ips: applied on g1." in page.inner_text("body")
    assert BLOCKED_IP in gateway_doc(cluster)["lists"]["block_ips"]
    entry = f'.bot-list[data-list="block_ips"] tr[data-value="{BLOCKED_IP}"]'
    expect(page.locator(f'{entry} td[data-k="on"]')).to_have_text("g1")
    page.wait_for_selector('#live-status[data-state="live"]')
    shop_reads(cluster, 5)
    page.wait_for_function(
        "() => Number(document.querySelector("
        '\'#bot-gateways tr[data-gateway="total"] td[data-k="allowed"]\').textContent) > 0'
    )
    page.screenshot(path=str(SCREENSHOTS / "bots.png"), full_page=True)

    # The gateway restarts (no Redis: back on cluster.toml's numbers, empty lists); the
    # console puts the operator's settings and list back on its next poll.
    cluster.kill_node("g1")
    page.wait_for_selector('#bot-gateways tr[data-gateway="g1"][data-up="false"]')
    cluster.start_gateway("g1")
    wait_for(
        lambda: (
            gateway_doc(cluster)["settings"]["challenge_difficulty"] == DIFFICULTY
            and BLOCKED_IP in gateway_doc(cluster)["lists"]["block_ips"]
        ),
        "the console re-applied the settings and the block list",
        cluster,
    )
    page.wait_for_selector('#bot-gateways tr[data-gateway="g1"][data-up="true"]')

    # A form posted without its CSRF token is refused and changes nothing.
    page.evaluate("document.querySelector('#bot-settings input[name=csrf_token]').remove()")
    page.fill("#f-challenge_difficulty", "5000")
    page.click("#settings-submit")
    expect(page.locator("h1")).to_contain_text("CSRF token missing")
    assert gateway_doc(cluster)["settings"]["challenge_difficulty"] == DIFFICULTY

    # Remove the entry again, and sign out: closed again.
    page.goto(f"{base}/bots")
    page.click(f"{entry} form.remove-entry button")
    page.wait_for_url(f"{base}/bots")
    assert BLOCKED_IP not in gateway_doc(cluster)["lists"]["block_ips"]
    page.click("#sign-out")
    page.wait_for_url(re.compile(r".*/login.*"))
    page.goto(f"{base}/bots")
    assert page.url.startswith(f"{base}/login")
