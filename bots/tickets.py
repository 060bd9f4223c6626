"""Signed queue tickets and admission tokens of the waiting room.

A queue ticket says which room handed it out, its place in line (``seq``), when its
holder arrived and who the holder is; an admission token says that ticket was admitted,
for whom, until when. Both are dot-separated text (safe in a URL path) closed by an
HMAC-SHA256 under a key derived from the cluster secret for this use only, so any
gateway of the cluster can check what another issued, and nobody can move up the line,
mint an admission or pass one to another account. The kind prefix (``t2``/``a2``) is
under the MAC: a ticket is never accepted as an admission token.

    t2.<room>.<seq>.<arrived_ms>.<nonce>.<holder>.<mac>
    a2.<room>.<seq>.<nonce>.<expires_ms>.<holder>.<mac>

The holder is ``holder_of(key, user_id)``, a keyed hash of the shopper's id: the place in
line belongs to the shopper who queued (one admission cannot serve a farm of accounts),
and the token does not show the shopper id to whoever sees it in a log or a URL.

Pure: the caller passes the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from cluster.auth import derive_key

QUEUE_LABEL = b"flashsale/bots-queue/v1"
MAX_TOKEN_CHARS = 200
TICKET_TTL_S = 86_400  # a ticket older than a day is worthless (take a new one)
_ROOM = re.compile(r"[a-z0-9]{1,24}")
_NONCE = re.compile(r"[0-9a-f]{16}")
_NUMBER = re.compile(r"[0-9]{1,16}")
_HOLDER = re.compile(r"[0-9a-f]{16}")
HOLDER_LABEL = b"holder:"  # domain separation from the tokens' own MACs


class InvalidTicket(Exception):
    """A ticket or admission token that is forged, malformed or expired."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Ticket:
    room: str
    seq: int
    arrived_ms: int
    nonce: str
    holder: str  # holder_of(key, the shopper who queued)


@dataclass(frozen=True, slots=True)
class Admission:
    room: str
    seq: int
    nonce: str
    expires_ms: int
    holder: str


def holder_of(key: bytes, user_id: str) -> str:
    """The holder field of ``user_id``'s tickets: 64 bits of HMAC-SHA256, hex."""
    digest = hmac.new(key, HOLDER_LABEL + user_id.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:16]


def queue_key(secret: str) -> bytes:
    """The HMAC key of tickets and admission tokens."""
    return derive_key(secret, QUEUE_LABEL)


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _parts(key: bytes, text: str, kind: str, count: int) -> list[str]:
    if len(text) > MAX_TOKEN_CHARS or not text.isascii():
        raise InvalidTicket("not a token of this shop")
    body, _, mac = text.rpartition(".")
    if not hmac.compare_digest(_mac(key, body), mac):
        raise InvalidTicket("not a token of this shop (bad signature)")
    parts = body.split(".")
    if len(parts) != count or parts[0] != kind:
        raise InvalidTicket("not a token of this kind")
    return parts[1:]


def sign_ticket(key: bytes, ticket: Ticket) -> str:
    """The ticket as text."""
    body = f"t2.{ticket.room}.{ticket.seq}.{ticket.arrived_ms}.{ticket.nonce}.{ticket.holder}"
    return f"{body}.{_mac(key, body)}"


def read_ticket(key: bytes, text: str, *, now: float) -> Ticket:
    """The ticket ``text`` holds; InvalidTicket when forged, malformed or too old."""
    room, seq, arrived, nonce, holder = _parts(key, text, "t2", 6)
    if not (_ROOM.fullmatch(room) and _NUMBER.fullmatch(seq) and _NUMBER.fullmatch(arrived)
            and _NONCE.fullmatch(nonce) and _HOLDER.fullmatch(holder)):  # fmt: skip
        raise InvalidTicket("malformed ticket")
    ticket = Ticket(room, int(seq), int(arrived), nonce, holder)
    if ticket.arrived_ms / 1000 + TICKET_TTL_S < now:
        raise InvalidTicket("the ticket is too old; take a new one", expired=True)
    return ticket


def sign_admission(key: bytes, ticket: Ticket, expires_ms: int) -> str:
    """An admission token for ``ticket`` (and its holder), good until ``expires_ms``."""
    body = f"a2.{ticket.room}.{ticket.seq}.{ticket.nonce}.{expires_ms}.{ticket.holder}"
    return f"{body}.{_mac(key, body)}"


def read_admission(key: bytes, text: str, *, now: float) -> Admission:
    """The admission ``text`` holds; InvalidTicket when forged, malformed or expired."""
    room, seq, nonce, expires, holder = _parts(key, text, "a2", 6)
    if not (_ROOM.fullmatch(room) and _NUMBER.fullmatch(seq) and _NONCE.fullmatch(nonce)
            and _NUMBER.fullmatch(expires) and _HOLDER.fullmatch(holder)):  # fmt: skip
        raise InvalidTicket("malformed admission token")
    admission = Admission(room, int(seq), nonce, int(expires), holder)
    if admission.expires_ms <= now * 1000:
        raise InvalidTicket("the admission expired; queue again", expired=True)
    return admission
