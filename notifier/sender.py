"""Sending: one loop per channel and queue, taking due rows from the outbox.

Theory of operation: a ``Sender`` serves one queue (orders, or bulk stock notices) of one
channel (email, SMS). Each step takes a token from the channel's bucket (bulk senders
leave one behind for order notices: ``BULK_KEEP_TOKENS``), claims the next due row,
unseals its contact details in memory, renders and hands the message to the provider,
then records the outcome: ``sent``; ``pending`` again after a backoff
(``notifier.backoff``) when the failure may pass; ``failed`` when it cannot or after the
configured number of attempts; ``erased`` (and the shopper's details dropped from the
outbox) when the shopper was erased meanwhile. A sender whose sends fail one after the
other pauses too (the same backoff), so an SMTP server that is down costs one attempt
per pause, not one per waiting row. A step in progress is finished before the loop
stops, so a clean shutdown never leaves a row ``sending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from notifier.backoff import gives_up, retry_delay_ms
from notifier.contacts import Channel, Contact
from notifier.delivery import SendFailed
from notifier.email import Mailer, build_message
from notifier.metrics import NotifierMetrics
from notifier.notices import Queue
from notifier.outbox import UNREADABLE, Outbox, Row
from notifier.rate import TokenBucket
from notifier.render import Templates
from notifier.sms import SmsProvider
from pii.errors import KeyErased

log = logging.getLogger("notifier.sender")

T = TypeVar("T")
BULK_KEEP_TOKENS = 1  # tokens a bulk sender leaves in the bucket for order notices
IDLE_RECHECK_S = 5.0  # an idle sender looks at the outbox at least this often


class Blocking(Protocol):
    """Runs a blocking call (outbox, key store) off the event loop, one at a time."""

    def __call__(self, fn: Callable[[], T]) -> Awaitable[T]: ...


class Transport(Protocol):
    channel: Channel

    async def deliver(self, row: Row, contact: Contact) -> str:
        """Render and hand over one notification; the provider's reference for it."""
        ...


class EmailTransport:
    channel = Channel.EMAIL

    def __init__(self, mailer: Mailer, templates: Templates, mail_from: str) -> None:
        self.mailer = mailer
        self.templates = templates
        self.mail_from = mail_from

    async def deliver(self, row: Row, contact: Contact) -> str:
        if contact.email is None:
            raise SendFailed("the sealed details hold no email address", permanent=True)
        email = self.templates.email(row.notice, row.params, contact)
        message = build_message(
            email, to=contact.email, mail_from=self.mail_from, notification_id=row.id
        )
        return await self.mailer.send(message)


class SmsTransport:
    channel = Channel.SMS

    def __init__(self, provider: SmsProvider, templates: Templates) -> None:
        self.provider = provider
        self.templates = templates

    async def deliver(self, row: Row, contact: Contact) -> str:
        if contact.phone is None:
            raise SendFailed("the sealed details hold no phone number", permanent=True)
        body = self.templates.sms(row.notice, row.params, contact)
        return await self.provider.send(contact.phone, body, row.id)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    first_ms: int
    max_ms: int
    stale_after_ms: int


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


async def wait_any(events: list[asyncio.Event], timeout_s: float) -> None:
    """Until one of ``events`` is set or ``timeout_s`` has passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)


class Sender:
    """Sends the rows of one channel's queue until stopped."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        call: Blocking,
        transport: Transport,
        queue: Queue,
        bucket: TokenBucket,
        policy: RetryPolicy,
        unseal: Callable[[str], Contact],
        metrics: NotifierMetrics,
    ) -> None:
        self.outbox = outbox
        self.call = call
        self.transport = transport
        self.channel = transport.channel
        self.queue = queue
        self.bucket = bucket
        self.policy = policy
        self.unseal = unseal
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.failures_in_a_row = 0
        self._keep = BULK_KEEP_TOKENS if queue is Queue.BULK else 0
        self._labels = (self.channel.value, queue.name.lower())

    async def step(self) -> float:
        """Send at most one due row; the seconds to wait before the next step (0: go on)."""
        self.wake.clear()
        now = wall_ms()
        due = await self.call(lambda: self.outbox.next_due_ms(self.channel, self.queue))
        if due is None:
            return IDLE_RECHECK_S
        if due > now:
            return min(IDLE_RECHECK_S, (due - now) / 1000)
        wait_ms = self.bucket.take(monotonic_ms(), keep=self._keep)
        if wait_ms:
            return wait_ms / 1000
        stale_before = now - self.policy.stale_after_ms
        row, stale = await self.call(
            lambda: self.outbox.claim(self.channel, self.queue, now, stale_before)
        )
        if stale:
            self.metrics.skipped.labels("stale").inc(stale)
        if row is None:
            return 0.0
        await self.send(row)
        if self.failures_in_a_row:
            p = self.policy
            return retry_delay_ms(self.failures_in_a_row, p.first_ms, p.max_ms, 0.0) / 1000
        return 0.0

    async def send(self, row: Row) -> None:
        """Send one claimed row and record the outcome."""
        try:
            contact = await self.call(lambda: self.unseal(row.sealed))
        except KeyErased:
            erased = await self.call(lambda: self.outbox.forget_user(row.user_id))
            self.metrics.skipped.labels("erased").inc(max(1, erased))
            log.info("shopper erased: their notifications are dropped", extra={"id": row.id})
            return
        except UNREADABLE as exc:
            error = f"unreadable details: {exc}"
            await self.call(lambda: self.outbox.mark_failed(row.id, error))
            self.metrics.given_up.labels(self.channel.value).inc()
            return
        started = time.perf_counter()
        try:
            reference = await self.transport.deliver(row, contact)
        except SendFailed as exc:
            self._failed(row, exc)
            error = str(exc)
            if exc.permanent or gives_up(row.attempts, self.policy.max_attempts):
                await self.call(lambda: self.outbox.mark_failed(row.id, error))
            else:
                p = self.policy
                pause = retry_delay_ms(row.attempts, p.first_ms, p.max_ms, random.random())
                await self.call(lambda: self.outbox.mark_retry(row.id, wall_ms() + pause, error))
            return
        await self.call(lambda: self.outbox.mark_sent(row.id, wall_ms(), reference))
        self.failures_in_a_row = 0
        self.metrics.send_seconds.labels(self.channel.value).observe(time.perf_counter() - started)
        self.metrics.sent.labels(*self._labels).inc()

    def _failed(self, row: Row, exc: SendFailed) -> None:
        final = exc.permanent or gives_up(row.attempts, self.policy.max_attempts)
        kind = "permanent" if exc.permanent else "transient"
        self.metrics.send_failures.labels(self.channel.value, kind).inc()
        if exc.permanent:
            # The address (or message) is refused: no reason to hold the whole queue back.
            self.failures_in_a_row = 0
        else:
            self.failures_in_a_row += 1
        if final:
            self.metrics.given_up.labels(self.channel.value).inc()
        log.log(
            logging.WARNING if final else logging.INFO,
            "send failed" + (", given up" if final else ", will retry"),
            extra={"id": row.id, "attempts": row.attempts, "error": str(exc)},
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Step until ``stop`` is set; a send in progress completes first."""
        while not stop.is_set():
            step = asyncio.ensure_future(self.step())
            try:
                # Shielded: a stop (or a cancel) lets the send finish and be recorded.
                pause = await asyncio.shield(step)
            except asyncio.CancelledError:
                await asyncio.gather(step, return_exceptions=True)
                raise
            except Exception:
                log.exception("sender step failed", extra={"channel": self.channel.value})
                self.failures_in_a_row += 1
                p = self.policy
                pause = retry_delay_ms(self.failures_in_a_row, p.first_ms, p.max_ms, 0.0) / 1000
            if pause > 0:
                # Failing: new rows must not cut the pause short (they would fail too).
                await wait_any([stop] if self.failures_in_a_row else [stop, self.wake], pause)
