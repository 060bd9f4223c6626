"""Email through SMTP (aiosmtplib): STARTTLS and AUTH as configured, text and HTML.

Theory of operation: each message is one SMTP session (connect, EHLO, STARTTLS when
configured, AUTH when a username is set, MAIL/RCPT/DATA, QUIT). The ``Message-ID`` is
derived from the notification id, so the one message sent again after a crash (the
instant between the server's acceptance and the outbox commit) carries the same id and
mail systems and clients can drop the repeat. Refusals with a 5xx code are permanent
(the address or the credentials will not get better); everything else (a refused
connection, a timeout, 4xx) is worth another try.
"""

from __future__ import annotations

import hashlib
import ssl
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Protocol

import aiosmtplib

from notifier.delivery import SendFailed
from notifier.render import Email

MESSAGE_ID_HEX_CHARS = 32


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> str:
        """Hand ``message`` to the provider; its answer (``SendFailed`` otherwise)."""
        ...


def message_id(notification_id: str, mail_from: str) -> str:
    """``<digest@domain>``: the same for every send of one notification."""
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "flashsale.invalid"
    digest = hashlib.sha256(notification_id.encode("utf-8")).hexdigest()[:MESSAGE_ID_HEX_CHARS]
    return f"<{digest}@{domain}>"


def build_message(email: Email, *, to: str, mail_from: str, notification_id: str) -> EmailMessage:
    """The MIME message (text, with an HTML alternative) of a rendered notice."""
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = to
    msg["Subject"] = email.subject
    msg["Message-ID"] = message_id(notification_id, mail_from)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    return msg


class SmtpMailer:
    """An SMTP relay: ``host:port``, STARTTLS and AUTH as configured."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: bool,
        username: str,
        password: str,
        ca_file: Path | None,
        timeout_s: float,
    ) -> None:
        self.host = host
        self.port = port
        self.starttls = starttls
        self.username = username
        self._password = password
        self.timeout_s = timeout_s
        self._tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    async def send(self, message: EmailMessage) -> str:
        try:
            _, response = await aiosmtplib.send(
                message,
                hostname=self.host,
                port=self.port,
                start_tls=self.starttls,
                use_tls=False,
                tls_context=self._tls if self.starttls else None,
                username=self.username or None,
                password=self._password if self.username else None,
                timeout=self.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise SendFailed(
                f"recipient refused ({', '.join(map(str, codes))})",
                permanent=all(500 <= c < 600 for c in codes),
            ) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise SendFailed(f"authentication refused: {exc.code}", permanent=False) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise SendFailed(
                f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}", permanent=False) from None
        return response
