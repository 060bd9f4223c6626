"""The notifier process SIGKILLed while it sends (and once at an arbitrary instant after
a sale event), restarted each time: every notification arrives, and none twice.

The notifier runs as ``python -m notifier`` against a feed server, a real SMTP server
(aiosmtpd) and an SMS endpoint in this process. The SMTP server holds a message's DATA
while the test kills the notifier, so the kill lands in the middle of a send: the server
never answered 250, the message is not taken, and the restarted notifier must send it
again, once. SMS are counted by the Idempotency-Key a provider deduplicates on, and
raw, to see that a repeat only ever happens for a send cut off by the kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.auth import internal_token
from cluster.config import load_config
from pii.sealing import Sealer
from tests.support.cluster import free_ports
from tests.support.notifier_rig import (
    SECRET,
    SMS_TOKEN,
    FeedServer,
    SmsSink,
    SmtpSink,
    buy,
    by_recipient,
    create_product,
    details,
    eventually,
    notifier_config_file,
    reserve,
    sealer,
)

REPO = Path(__file__).resolve().parent.parent
SUBSCRIBERS = 12
PHONE_SUBSCRIBERS = 3
BUYERS = 3
START_TIMEOUT_S = 30.0


class NotifierProcess:
    """``python -m notifier`` started and killed by pid."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        env.update(FLASHSALE_SMS_TOKEN=SMS_TOKEN, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notifier", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        self.pids.append(self.proc.pid)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def request(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {internal_token(SECRET)}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    async def ready(self) -> None:
        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                return self.request("GET", "/healthz")["ok"] is True
            except OSError:
                return False

        await eventually(healthy, START_TIMEOUT_S, "the notifier to serve /healthz")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def notifier_process(tmp_path: Path) -> Iterator[list[NotifierProcess]]:
    made: list[NotifierProcess] = []
    try:
        yield made
    finally:
        for p in made:
            p.kill_all()


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[tuple[FeedServer, SmtpSink, SmsSink]]:
    feed, smtp, sms = FeedServer(), SmtpSink(), SmsSink()
    await feed.start()
    smtp.start()
    await sms.start()
    try:
        yield feed, smtp, sms
    finally:
        await sms.stop()
        smtp.stop()
        await feed.stop()


async def kill_mid_send(proc: NotifierProcess, smtp: SmtpSink) -> None:
    """SIGKILL the notifier while the SMTP server holds a message's DATA (set
    ``smtp.hold_at`` first) and every message it took is recorded as sent: the kill cuts
    a send off before the server's answer, never between the answer and the record.
    Then the server goes on."""
    assert smtp.hold_at is not None

    def in_flight() -> bool:
        if not smtp.in_data.is_set() or smtp.count() < (smtp.hold_at or 0):
            return False
        sent: int = proc.request("GET", "/v1/outbox")["sent"].get("email", 0)
        return sent == smtp.count()

    await eventually(in_flight, what="an email send in flight, the ones before it recorded")
    proc.kill()
    smtp.hold_at = None
    smtp.in_data.clear()


async def test_killed_mid_send_and_restarted_loses_and_duplicates_nothing(
    tmp_path: Path, notifier_process: list[NotifierProcess]
) -> None:
    async with servers() as (feed, smtp, sms):
        port = free_ports(1)[0]
        path = notifier_config_file(
            tmp_path, feed_port=feed.port, smtp=smtp, sms=sms, listen_port=port,
            feed_wait_ms=1_000,
        )
        seal: Sealer = sealer(load_config(path, env={}))
        proc = NotifierProcess(path, port, tmp_path / "notifier.log")
        notifier_process.append(proc)
        try:
            proc.start()
            await proc.ready()
            await feed.apply(
                create_product(feed, "drop", stock=1), create_product(feed, "p", stock=9)
            )
            for i in range(SUBSCRIBERS):
                contact = {"email": f"fan{i}@example.com"}
                if i < PHONE_SUBSCRIBERS:
                    contact["phone"] = f"+1555000{i:04d}"
                sealed = seal.seal(f"fan{i}", contact)
                proc.request(
                    "POST",
                    "/v1/subscriptions",
                    {"user_id": f"fan{i}", "product_id": "drop", "sealed": sealed},
                )

            # Kill 1: in the middle of the first order's email.
            smtp.hold_at = 0
            for i in range(BUYERS):
                info = details(f"buyer{i}@example.com", f"+1555100{i:04d}")
                await buy(feed, seal, f"buyer{i}", "p", info)
            await kill_mid_send(proc, smtp)
            assert smtp.count() == 0

            # Kill 2: once the sold-out event's 15 notices are recorded, sending held.
            smtp.hold_at = 0
            proc.start()
            await proc.ready()
            sold_out = (await feed.apply(reserve(feed, "holder", "drop"))).index
            await eventually(lambda: proc.request("GET", "/v1/outbox")["feed_index"] >= sold_out)
            await kill_mid_send(proc, smtp)
            assert smtp.count() == 0

            # Kill 3: in the middle of the bulk notices.
            smtp.hold_at = BUYERS + 4
            proc.start()
            await proc.ready()
            await kill_mid_send(proc, smtp)
            kills = 3

            proc.start()
            await proc.ready()
            index = feed.feed.ledger.index

            def settled() -> bool:
                s = proc.request("GET", "/v1/outbox")
                return s["feed_index"] >= index and not s["pending"]

            await eventually(settled, 30, "every notice to be sent")
            summary = proc.request("GET", "/v1/outbox")
            assert proc.stop() == 0
        except BaseException:
            print(proc.log_tail())
            raise
        finally:
            seal.keys.close()

        emails = smtp.received()
        ids = [m.message_id for m in emails]
        assert len(ids) == len(set(ids)), "an email was delivered twice"
        expected = {f"buyer{i}@example.com" for i in range(BUYERS)}
        expected |= {f"fan{i}@example.com" for i in range(SUBSCRIBERS)}
        mails = by_recipient(emails)
        assert set(mails) == expected
        assert all(len(v) == 1 for v in mails.values())
        assert len(emails) == BUYERS + SUBSCRIBERS

        keys = [m.idempotency_key for m in sms.messages]
        phones = sorted({m.to for m in sms.messages})
        assert phones == sorted(
            [f"+1555100{i:04d}" for i in range(BUYERS)]
            + [f"+1555000{i:04d}" for i in range(PHONE_SUBSCRIBERS)]
        )
        assert len(set(keys)) == BUYERS + PHONE_SUBSCRIBERS
        # SMS sends are not held: an SMS can arrive twice only when a kill fell between
        # the provider's answer and the record (at most one per sender, order and bulk,
        # per kill), and the repeat carries the same Idempotency-Key for the provider.
        assert len(keys) - len(set(keys)) <= 2 * kills
        assert summary["rows"] == {"sent": 2 * BUYERS + SUBSCRIBERS + PHONE_SUBSCRIBERS}


def test_a_busy_listen_address_stops_the_notifier_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = notifier_config_file(
            tmp_path, feed_port=free_ports(1)[0], smtp=None, sms=None, listen_port=port
        )
        proc = NotifierProcess(path, port, tmp_path / "notifier.log")
        proc.start()
        try:
            assert proc.proc is not None and proc.proc.wait(60) == 2
        finally:
            proc.kill_all()
    assert f"cannot listen on 127.0.0.1:{port}" in proc.log_tail()
