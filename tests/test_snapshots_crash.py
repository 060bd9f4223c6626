"""A writer process SIGKILLed again and again while it writes, then restarted, ends with
exactly the rows of a writer that never stopped: no row lost, none duplicated.

The child process replays the same seeded sale into an in-process feed each time it
starts (the sale is deterministic), so every incarnation reads the same events, as
writers restarted against a real cluster do.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshots.ledger_feed import LedgerFeed
from snapshots.sale import SALE_SETTINGS, simulate_sale
from snapshots.store import SnapshotStore
from snapshots.writer import SnapshotWriter
from tests.support.stores import STORE_KINDS, store_url

REPO = Path(__file__).resolve().parent.parent
SEED = 77
ENTRIES = 300
BATCH_EVENTS = 25  # small transactions: many chances to die between and inside them
START_TIMEOUT_S = 60.0
KILLS = 6


def sale() -> LedgerFeed:
    feed = LedgerFeed(10**7, SALE_SETTINGS)
    simulate_sale(feed, seed=SEED, entries=ENTRIES)
    return feed


def child(url: str) -> None:
    """The writer process: follow the sale's feed into ``url`` until it is all there."""
    feed = sale()
    writer = SnapshotWriter(
        lambda: SnapshotStore.open(url), feed, batch_events=BATCH_EVENTS, wait_ms=0
    )

    async def go() -> None:
        await writer._ensure_store()
        print("writing", flush=True)
        await writer.catch_up(feed.ledger.index, timeout_s=300)
        await writer._drop_store()

    asyncio.run(go())
    print("done", flush=True)


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as u:
        yield u


def spawn(url: str) -> subprocess.Popen[str]:
    code = "import sys; from tests.test_snapshots_crash import child; child(sys.argv[1])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    return subprocess.Popen(
        [sys.executable, "-c", code, url],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def applied(url: str) -> int:
    store = SnapshotStore.open(url)
    try:
        return store.applied_index()
    finally:
        store.close()


def test_sigkilled_writers_converge_to_the_uninterrupted_rows(url: str, tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    feed = sale()
    started: list[subprocess.Popen[str]] = []
    try:
        positions = []
        for _ in range(KILLS):
            proc = spawn(url)
            started.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "writing"
            # The fault: a SIGKILL at a random instant of the writing, transactions or not.
            time.sleep(rnd.uniform(0.01, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc.stdout.close()
            positions.append(applied(url))
        print("applied index after each kill:", positions, "of", feed.ledger.index)
        # On a quiet machine a later incarnation may finish before its kill: what matters
        # is that kills did land mid-write, and that each restart went on from the last.
        assert positions[0] < feed.ledger.index, "the kills came too late to interrupt"
        assert positions == sorted(positions)
        final = spawn(url)
        started.append(final)
        out, _ = final.communicate(timeout=START_TIMEOUT_S * 4)
        assert final.returncode == 0 and out.split() == ["writing", "done"]
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None and not proc.stdout.closed:
                proc.stdout.close()

    with store_url("sqlite", tmp_path, "reference") as ref_url:
        reference = SnapshotWriter(
            lambda: SnapshotStore.open(ref_url), feed, batch_events=1000, wait_ms=0
        )

        async def go() -> None:
            await reference.catch_up(feed.ledger.index, timeout_s=120)
            await reference._drop_store()

        asyncio.run(go())
        ref, got = SnapshotStore.open(ref_url), SnapshotStore.open(url)
        try:
            assert got.dump() == ref.dump()
        finally:
            ref.close()
            got.close()
