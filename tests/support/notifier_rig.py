"""What the notifier tests run it against: a real SMTP server (aiosmtpd on loopback), a
local SMS endpoint speaking Twilio's Messages API, and a feed server speaking the nodes'
``GET /v1/feed`` protocol over a real in-process ledger (``snapshots.ledger_feed``).

``SmtpSink`` runs aiosmtpd's threaded controller; ``stop()`` and ``start()`` take it down
and bring it back on the same port. It records every message whose DATA it accepted
(after an optional delay, during which a client that disappears leaves nothing behind,
as with any SMTP server). ``SmsSink`` and ``FeedServer`` are aiohttp servers on the
test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email
import email.policy
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from cluster.auth import check_bearer
from cluster.config import ClusterConfig, load_config
from ledger import Applied, Settings
from pii.keystore import KeyStore
from pii.sealing import Sealer
from snapshots.ledger_feed import LedgerFeed
from tests.support.cluster import free_ports

SECRET = "notifier-test-secret-0123456789abcdef"
SMS_ACCOUNT = "AC0123456789"
SMS_TOKEN = "sms-test-token"
SMS_FROM = "+15550001111"
MAIL_FROM = "flashsale <shop@flashsale.test>"
SMTP_USER = "mailer"
SMTP_PASSWORD = "mail-password"
POLL_S = 0.02


async def eventually(check: Any, timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``check()`` (sync or async) until it is truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(POLL_S)


# -- SMTP ----------------------------------------------------------------------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    def body(self, subtype: str) -> str:
        part = self.message.get_body(preferencelist=(subtype,))
        assert part is not None, f"no text/{subtype} part"
        return str(part.get_content())


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        sink.in_data.set()
        # Held (a test kills the client meanwhile): a client that disappears before the
        # 250 below cancels this handler, so its message is not taken.
        while sink.hold_at is not None and sink.count() >= sink.hold_at:
            await asyncio.sleep(POLL_S)
        raw = envelope.original_content or envelope.content or b""
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with sink.lock:
            sink.messages.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), parsed)
            )
        return "250 OK queued"


class SmtpSink:
    """A real SMTP server on 127.0.0.1 (optionally STARTTLS + AUTH required)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.port = port or free_ports(1)[0]
        self.tls = tls
        self.auth = auth
        self.hold_at: int | None = None  # hold DATA once this many messages were taken
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.in_data = threading.Event()
        self._controller: Controller | None = None
        self.logins: list[str] = []

    def _authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            self.auth is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == self.auth
        )
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            kwargs.update(tls_context=self.tls, require_starttls=True)
        if self.auth is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10, **kwargs
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 and the PEM file a client must trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


# -- SMS -----------------------------------------------------------------------------------


@dataclass
class Sms:
    to: str
    sender: str
    body: str
    idempotency_key: str
    auth: str


@dataclass
class SmsSink:
    """A Twilio-style Messages endpoint: form POST with basic auth, 201 with a sid."""

    port: int = field(default_factory=lambda: free_ports(1)[0])
    messages: list[Sms] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests 503 first
    refused: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/2010-04-01/Accounts/{SMS_ACCOUNT}/Messages.json"

    async def _post(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.fail_next > 0:
            self.fail_next -= 1
            self.refused += 1
            return web.json_response({"code": 20500, "message": "try later"}, status=503)
        self.messages.append(
            Sms(
                to=str(form["To"]),
                sender=str(form["From"]),
                body=str(form["Body"]),
                idempotency_key=request.headers.get("Idempotency-Key", ""),
                auth=request.headers.get("Authorization", ""),
            )
        )
        return web.json_response({"sid": f"SM{len(self.messages):032d}"}, status=201)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(f"/2010-04-01/Accounts/{SMS_ACCOUNT}/Messages.json", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- the feed ------------------------------------------------------------------------------


class FeedServer:
    """``GET /v1/feed`` of a real in-process ledger (retention as a node's ring)."""

    def __init__(self, retention_events: int = 100_000) -> None:
        self.feed = LedgerFeed(retention_events, Settings(payment_ttl_ms=600_000))
        self.port = free_ports(1)[0]
        self.requests = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._keys = 0

    def key(self) -> str:
        self._keys += 1
        return f"k{self._keys}"

    async def apply(self, *commands: Mapping[str, Any]) -> Applied:
        """Apply one batch now (ledger time = wall clock) and wake the long-polls."""
        applied = self.feed.apply(time.time_ns() // 1_000_000, [dict(c) for c in commands])
        async with self._changed:
            self._changed.notify_all()
        return applied

    async def _get(self, request: web.Request) -> web.Response:
        if not check_bearer(request.headers.get("Authorization"), SECRET):
            return web.json_response({"title": "unauthorized"}, status=401)
        self.requests += 1
        start = int(request.query["from"])
        limit = int(request.query.get("limit", "1000"))
        wait_s = int(request.query.get("wait_ms", "0")) / 1000
        page = await self.feed.fetch(start, limit, 0)
        if not page.events and page.snapshot is None and page.last_index <= start and wait_s:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.feed.ledger.index > start), wait_s
                    )
            page = await self.feed.fetch(start, limit, 0)
        return web.json_response(
            {
                "events": list(page.events),
                "last_index": page.last_index,
                "snapshot": page.snapshot,
            }
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/feed", self._get)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- configuration and a shopper's life ----------------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def notifier_config_file(
    directory: Path,
    *,
    feed_port: int,
    smtp: SmtpSink | None,
    sms: SmsSink | None,
    listen_port: int | None = None,
    **notifier: object,
) -> Path:
    """A cluster.toml whose one "node" is the feed server and whose notifier uses the
    sinks; fast retries, generous rate caps unless ``notifier`` says otherwise."""
    settings: dict[str, object] = {
        "outbox": str(directory / "outbox.db"),
        "feed_wait_ms": 2_000,
        "mail_from": MAIL_FROM,
        "smtp_starttls": False,
        "retry_first_ms": 50,
        "retry_max_ms": 400,
        "max_attempts": 1_000,
        "email_per_minute": 60_000,
        "email_burst": 50,
        "sms_per_minute": 60_000,
        "sms_burst": 50,
    }
    if smtp is not None:
        settings.update(smtp_host="127.0.0.1", smtp_port=smtp.port)
    if sms is not None:
        settings.update(sms_url=sms.url, sms_account=SMS_ACCOUNT, sms_from=SMS_FROM)
    if listen_port is not None:
        settings["listen"] = f"127.0.0.1:{listen_port}"
    settings.update(notifier)
    raft, admin = free_ports(2)
    lines = [
        "[cluster]",
        f"secret = {_toml(SECRET)}",
        f"data_dir = {_toml(directory / 'data')}",
        "",
        "[[nodes]]",
        'id = "n1"',
        f'raft = "127.0.0.1:{raft}"',
        f'api = "127.0.0.1:{feed_port}"',
        "",
        "[admin]",
        f'listen = "127.0.0.1:{admin}"',
        "",
        "[storage]",
        f"url = {_toml('sqlite:///' + str(directory / 'orders.db'))}",
        "",
        "[notifier]",
        *(f"{k} = {_toml(v)}" for k, v in settings.items()),
        "",
    ]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def notifier_config(directory: Path, **kwargs: Any) -> ClusterConfig:
    """``notifier_config_file``, loaded."""
    return load_config(notifier_config_file(directory, **kwargs), env={})


def sealer(config: ClusterConfig) -> Sealer:
    """A gateway's sealer for ``config``'s key store (close ``.keys`` after use)."""
    return Sealer(KeyStore.open(config))


def details(
    email_address: str | None = None, phone: str | None = None, name: str | None = None
) -> dict[str, object]:
    address: dict[str, object] = {
        "address_line1": "1 Test Street",
        "city": "Lyon",
        "postal_code": "69001",
        "country": "FR",
    }
    if name is not None:
        address["name"] = name
    out: dict[str, object] = {"shipping_address": address}
    if email_address is not None:
        out["email"] = email_address
    if phone is not None:
        out["phone"] = phone
    return out


def create_product(
    feed: FeedServer, product_id: str, *, stock: int, price_minor: int = 1999, name: str = ""
) -> dict[str, Any]:
    return {
        "type": "create_product",
        "key": feed.key(),
        "product_id": product_id,
        "name": name or product_id.title(),
        "price_minor": price_minor,
        "currency": "USD",
        "total_stock": stock,
    }


def reserve(feed: FeedServer, user_id: str, product_id: str, quantity: int = 1) -> dict[str, Any]:
    return {
        "type": "reserve",
        "key": feed.key(),
        "user_id": user_id,
        "product_id": product_id,
        "quantity": quantity,
    }


async def buy(
    feed: FeedServer, seal: Sealer, user_id: str, product_id: str, info: Mapping[str, object],
    quantity: int = 1,
) -> str:
    """Reserve then check out with sealed details; the order id."""
    held = await feed.apply(reserve(feed, user_id, product_id, quantity))
    result = held.results[0]
    cart_id = getattr(result, "cart_id", None)
    assert cart_id, f"reserve refused: {result}"
    placed = await feed.apply(
        {
            "type": "checkout",
            "key": feed.key(),
            "user_id": user_id,
            "cart_id": cart_id,
            "payment_method": "pm_test",
            "sealed_details": seal.seal(user_id, info),
        }
    )
    order_id = getattr(placed.results[0], "order_id", None)
    assert order_id, f"checkout refused: {placed.results[0]}"
    return str(order_id)


def paid(feed: FeedServer, order_id: str, amount_minor: int) -> dict[str, Any]:
    return {
        "type": "record_payment",
        "key": feed.key(),
        "order_id": order_id,
        "outcome": "paid",
        "amount_minor": amount_minor,
        "provider": "stripe",
        "transaction_id": f"tx-{order_id}",
    }


def by_recipient(messages: Sequence[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for m in messages:
        for r in m.recipients:
            out.setdefault(r, []).append(m)
    return out
