"""The demo with the bot defences on: the shop page in a real headless chromium (which
says HeadlessChrome in its User-Agent) gets a guest session and a hold, from loopback,
under the shipped [bots] limits, and no request of it is limited or blocked.

Every defence of cluster.toml is on here, as in ``make run``; the gateway runs in this
process over an in-process ledger (tests/test_gateway_api.py's InProcessCluster).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from cluster.config import BotsConfig
from gateway.defences import BOTS
from tests.support.bots import Gateway, bots_config, cluster_name

CHROMIUM = Path("/usr/bin/chromium")
UI_TIMEOUT_MS = 30_000


def _decisions(metrics: str, decision: str) -> float:
    pattern = rf'flashsale_gateway_bot_decisions_total\{{decision="{decision}",[^}}]*\}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, metrics))


async def test_the_shop_page_works_from_loopback_with_every_defence_on(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the browser test")
    async_api = pytest.importorskip("playwright.async_api")
    shipped = {name: getattr(BotsConfig(), name) for name in ("challenge", "waiting_room")}
    config = bots_config(tmp_path, cluster_name(), **shipped)  # cluster.toml's defaults
    gw = await Gateway.start(config)
    try:
        gw.create("tee", 20)
        base = str(gw.client.make_url("/")).rstrip("/")
        requests: list[str] = []
        async with async_api.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--headless=new", "--no-sandbox", "--disable-gpu"],
            )
            try:
                page = await browser.new_page()
                page.set_default_timeout(UI_TIMEOUT_MS)
                page.on("request", lambda r: requests.append(r.url))
                await page.goto(base + "/")
                await page.wait_for_selector('body[data-ready="true"]')
                agent = await page.evaluate("navigator.userAgent")
                assert "HeadlessChrome" in agent
                tee = 'article[data-product="tee"]'
                await page.wait_for_selector(f"{tee} .add:not([disabled])")
                # Two holds as fast as Playwright clicks: likely inside min_page_to_write_ms
                # of their challenges (fast-write), which must not add up to a block.
                await page.click(f"{tee} .add")
                await async_api.expect(page.locator("#message")).to_have_attribute(
                    "data-kind", "held"
                )
                await page.wait_for_selector(f"{tee} .add:not([disabled])")
                await page.click(f"{tee} .add")
                await async_api.expect(page.locator(f"{tee} .available")).to_have_text("18")
                # A reload is the same shopper (session storage), and fine too.
                await page.reload()
                await page.wait_for_selector('body[data-ready="true"]')
            finally:
                await browser.close()
        metrics = await (await gw.client.get("/metrics")).text()
        assert _decisions(metrics, "limited") == 0 and _decisions(metrics, "blocked") == 0
        assert _decisions(metrics, "allowed") > 0
        product = gw.cluster.ledger.product("tee")
        assert product is not None and product.available == 18
        noted = gw.app[BOTS].suspicion.noted("127.0.0.1", None, time.time())
        print(f"signals noted against the page: {noted}")
        # What one page costs the per-IP bucket: well inside the shipped burst.
        guarded = [u for u in requests if "/static/" not in u]
        print(f"guarded requests of one page, two holds and a reload: {len(guarded)}")
        assert len(guarded) < BotsConfig().ip_burst, guarded
        assert BOTS in gw.app
    finally:
        await gw.close()
