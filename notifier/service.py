"""The notifier assembled: outbox, key store, feed follower, senders and housekeeping.

Theory of operation: every blocking call (the outbox's SQLite connection, the key store
that opens sealed details) runs on one dedicated thread, one call at a time, so neither
needs locking of its own and the event loop never blocks. ``run`` starts the follower,
one sender per enabled channel and queue (order notices and bulk stock notices apart,
sharing the channel's rate cap) and a housekeeping loop that prunes rows older than the
dedupe window and refreshes the gauges; it returns once ``stop`` is set and each of
them has finished what it was doing. Contact details are unsealed in memory only, for
the address hashes when a notice or subscription is recorded and for the send.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from cluster.config import ClusterConfig, NotifierConfig
from notifier.contacts import Channel, Contact, contact_of, hash_key
from notifier.email import Mailer, SmtpMailer
from notifier.follower import Follower
from notifier.metrics import NotifierMetrics
from notifier.notices import Queue
from notifier.outbox import Outbox
from notifier.rate import TokenBucket
from notifier.render import Templates
from notifier.sender import (
    EmailTransport,
    RetryPolicy,
    Sender,
    SmsTransport,
    Transport,
    monotonic_ms,
    wait_any,
    wall_ms,
)
from notifier.sms import SmsProvider, TwilioSms
from pii.keystore import KeyStore
from pii.sealing import Unsealer
from snapshots.feed import FeedSource, NodeFeed

log = logging.getLogger("notifier.service")

T = TypeVar("T")
HOUSEKEEPING_PERIOD_S = 15.0  # gauges refreshed this often
PRUNE_EVERY_ROUNDS = 40  # finished rows past the dedupe window go every ~10 minutes


class NotifierSetupError(RuntimeError):
    """The notifier cannot start as configured (a credential missing, say)."""


@dataclass(frozen=True, slots=True)
class Subscribed:
    product_id: str
    user_id: str
    channels: list[Channel]


class SealedForAnother(ValueError):
    """Sealed details of one shopper offered for another."""


class NoAddress(ValueError):
    """Sealed details without an email address or a phone number."""


def build_mailer(n: NotifierConfig, env: Mapping[str, str]) -> Mailer | None:
    """The SMTP relay of the config (None: email is off)."""
    if not n.email_enabled:
        return None
    password = env.get(n.smtp_password_env, "")
    if n.smtp_username and not password:
        raise NotifierSetupError(
            f"notifier.smtp_username is set but ${n.smtp_password_env} is empty"
        )
    return SmtpMailer(
        n.smtp_host,
        n.smtp_port,
        starttls=n.smtp_starttls,
        username=n.smtp_username,
        password=password,
        ca_file=n.smtp_ca_file,
        timeout_s=n.smtp_timeout_ms / 1000,
    )


def build_sms(n: NotifierConfig, env: Mapping[str, str]) -> SmsProvider | None:
    """The SMS provider of the config (None: SMS is off)."""
    if not n.sms_enabled:
        return None
    token = env.get(n.sms_token_env, "")
    if not token:
        raise NotifierSetupError(f"notifier.sms_url is set but ${n.sms_token_env} is empty")
    return TwilioSms(
        n.sms_url,
        account=n.sms_account,
        token=token,
        sender=n.sms_from,
        timeout_s=n.sms_timeout_ms / 1000,
    )


class Notifier:
    """One notifier process's machinery (``start``, ``run``, ``close``)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        feed: FeedSource | None = None,
        mailer: Mailer | None = None,
        sms: SmsProvider | None = None,
        templates: Templates | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """The channels are the config's (credentials from ``env``, by default the
        process environment); ``feed``, ``mailer`` and ``sms`` replace its parts."""
        self.config = config
        self.settings = config.notifier
        self.metrics = NotifierMetrics()
        self.templates = templates or Templates.load()
        environ = os.environ if env is None else env
        self.mailer = mailer if mailer is not None else build_mailer(self.settings, environ)
        self.sms = sms if sms is not None else build_sms(self.settings, environ)
        self.feed: FeedSource = feed or NodeFeed(config)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notifier-db")
        self._outbox: Outbox | None = None
        self._unsealer: Unsealer | None = None
        self.follower: Follower | None = None
        self.senders: list[Sender] = []

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a blocking call on the notifier's one blocking thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("the notifier is not started")
        return self._outbox

    def unseal(self, sealed: str) -> Contact:
        """The contact inside sealed details (blocking: the key store is read)."""
        if self._unsealer is None:
            raise RuntimeError("the notifier is not started")
        return contact_of(self._unsealer.unseal(sealed).details)

    async def start(self) -> None:
        """Open the outbox and the key store; build the follower and the senders."""
        s = self.settings
        channels = [
            c for c, on in ((Channel.EMAIL, self.mailer is not None), (Channel.SMS, self.sms)) if on
        ]
        key = hash_key(self.config.secret)

        def open_all() -> tuple[Outbox, Unsealer, int]:
            outbox = Outbox.open(
                s.outbox,
                hash_key=key,
                channels=channels,
                stock_window_ms=s.stock_notice_window_s * 1000,
            )
            try:
                keys = KeyStore.open(self.config)
            except BaseException:
                outbox.close()
                raise
            return outbox, Unsealer(keys), outbox.recover(wall_ms())

        self._outbox, self._unsealer, recovered = await self.call(open_all)
        if recovered:
            log.warning(
                "notifications in flight when the last process stopped are sent again",
                extra={"count": recovered},
            )
        self.follower = Follower(
            outbox=self.outbox,
            call=self.call,
            feed=self.feed,
            unseal=self.unseal,
            metrics=self.metrics,
            on_enqueued=self.wake_senders,
            batch_events=s.batch_events,
            wait_ms=s.feed_wait_ms,
        )
        policy = RetryPolicy(
            max_attempts=s.max_attempts,
            first_ms=s.retry_first_ms,
            max_ms=s.retry_max_ms,
            stale_after_ms=s.stale_after_s * 1000,
        )
        transports: list[tuple[Transport, TokenBucket]] = []
        now = monotonic_ms()
        if self.mailer is not None:
            transports.append(
                (
                    EmailTransport(self.mailer, self.templates, s.mail_from),
                    TokenBucket.full(s.email_per_minute, s.email_burst, now),
                )
            )
        if self.sms is not None:
            transports.append(
                (
                    SmsTransport(self.sms, self.templates),
                    TokenBucket.full(s.sms_per_minute, s.sms_burst, now),
                )
            )
        self.senders = [
            Sender(
                outbox=self.outbox,
                call=self.call,
                transport=transport,
                queue=queue,
                bucket=bucket,  # one per provider, shared by its two queues
                policy=policy,
                unseal=self.unseal,
                metrics=self.metrics,
            )
            for transport, bucket in transports
            for queue in Queue
        ]
        waiting = (await self.call(self.outbox.summary))["pending"]
        idle = {k: n for k, n in waiting.items() if k.split("/")[0] not in channels}
        if idle:
            # Recorded while the channel was configured: they go once it is again.
            log.warning("notifications wait for a channel that is off", extra={"rows": idle})
        log.info(
            "notifier ready",
            extra={
                "outbox": str(s.outbox),
                "channels": [c.value for c in channels],
                "feed_index": await self.call(self.outbox.position),
            },
        )

    def wake_senders(self) -> None:
        for sender in self.senders:
            sender.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow, send and keep house until ``stop`` is set."""
        if self.follower is None:
            raise RuntimeError("start() the notifier first")
        tasks = [asyncio.ensure_future(self.follower.run(stop))]
        tasks += [asyncio.ensure_future(s.run(stop)) for s in self.senders]
        tasks.append(asyncio.ensure_future(self._housekeeping(stop)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        rounds = 0
        while not stop.is_set():
            try:
                if rounds % PRUNE_EVERY_ROUNDS == 0:
                    before = wall_ms() - self.settings.dedupe_window_s * 1000
                    pruned = await self.call(functools.partial(self.outbox.prune, before))
                    if pruned:
                        log.info("pruned finished notifications", extra={"rows": pruned})
                await self.refresh_gauges()
            except Exception as exc:
                log.warning("housekeeping failed", extra={"error": str(exc)[:300]})
            rounds += 1
            await wait_any([stop], HOUSEKEEPING_PERIOD_S)

    async def refresh_gauges(self) -> dict[str, Any]:
        summary = await self.call(self.outbox.summary)
        for sender in self.senders:
            key = f"{sender.channel.value}/{sender.queue.name.lower()}"
            self.metrics.pending.labels(sender.channel.value, sender.queue.name.lower()).set(
                summary["pending"].get(key, 0)
            )
        self.metrics.subscriptions.set(summary["subscriptions"])
        return summary

    async def subscribe(self, product_id: str, user_id: str, sealed: str) -> Subscribed:
        """Store a subscription to a product's stock notices. Raises ``SealedForAnother``,
        ``NoAddress``, ``TooManySubscriptions`` and the ``pii`` errors of unreadable
        details."""

        def work() -> list[Channel]:
            if self._unsealer is None:
                raise RuntimeError("the notifier is not started")
            opened = self._unsealer.unseal(sealed)
            if opened.user_id != user_id:
                raise SealedForAnother(f"the details are not sealed for {user_id!r}")
            contact = contact_of(opened.details)
            if contact.email is None and contact.phone is None:
                raise NoAddress("the details hold neither an email address nor a phone number")
            return self.outbox.subscribe(product_id, user_id, sealed, contact, wall_ms())

        return Subscribed(product_id, user_id, await self.call(work))

    async def unsubscribe(self, product_id: str, user_id: str) -> bool:
        return await self.call(lambda: self.outbox.unsubscribe(product_id, user_id))

    async def close(self) -> None:
        """Close the feed, the providers, the outbox and the key store."""
        with contextlib.suppress(Exception):
            await self.feed.close()
        if self.sms is not None:
            await self.sms.close()

        def close_all() -> None:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None
            if self._unsealer is not None:
                self._unsealer.keys.close()
                self._unsealer = None

        await self.call(close_all)
        self._executor.shutdown(wait=True)
