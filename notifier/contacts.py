"""A shopper's contact details, as the notifier sees them once unsealed (pure).

Theory of operation: contact details reach the notifier sealed (``pii.sealing``): the
sealed details of an order (``{"shipping_address": {...}, "email"?, "phone"?}``) or of a
subscription (``{"email"?, "phone"?}``). ``contact_of`` picks what a notice needs out of
the unsealed details; values that are not a plausible address are ignored rather than
sent to a provider. ``address_hash`` names an address without revealing it: an HMAC under
a key derived from the cluster secret, so the outbox can deduplicate per address and
never store one in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cluster.auth import derive_key

ADDRESS_HASH_LABEL = b"flashsale/notifier-address/v1"
ADDRESS_HASH_HEX_CHARS = 32  # 128 bits: collisions are not a concern
MAX_EMAIL_LEN = 254  # RFC 5321 path limit
MAX_NAME_LEN = 200
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
PHONE_PATTERN = re.compile(r"\+[1-9][0-9]{6,14}")
_PHONE_SEPARATORS = re.compile(r"[\s().-]")  # how people group digits when they type them


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


@dataclass(frozen=True, slots=True)
class Contact:
    email: str | None = None
    phone: str | None = None
    name: str | None = None

    def address(self, channel: Channel) -> str | None:
        return self.email if channel is Channel.EMAIL else self.phone


def valid_email(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_EMAIL_LEN
        and EMAIL_PATTERN.fullmatch(value) is not None
    )


def valid_phone(value: object) -> bool:
    return isinstance(value, str) and PHONE_PATTERN.fullmatch(value) is not None


def e164(value: object) -> str | None:
    """A phone number as E.164 (``+33 6 12-34 (56) 78`` -> ``+33612345678``), or None."""
    if not isinstance(value, str):
        return None
    compact = _PHONE_SEPARATORS.sub("", value)
    return compact if valid_phone(compact) else None


def contact_of(details: Mapping[str, Any]) -> Contact:
    """The email, phone and name inside unsealed order or subscription details."""
    email = details.get("email")
    phone = e164(details.get("phone"))
    address = details.get("shipping_address")
    name = address.get("name") if isinstance(address, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LEN:
        name = None
    return Contact(
        email=email if valid_email(email) else None,
        phone=phone,
        name=name.strip() if name else None,
    )


def hash_key(secret: str) -> bytes:
    """The key of ``address_hash`` for a cluster secret."""
    return derive_key(secret, ADDRESS_HASH_LABEL)


def normalized(channel: Channel, address: str) -> str:
    # Domains are case-insensitive and local parts almost always treated so in practice.
    return address.strip().lower() if channel is Channel.EMAIL else address.strip()


def address_hash(key: bytes, channel: Channel, address: str) -> str:
    """A stable, keyed name of an address (equal for equal addresses of a channel)."""
    message = f"{channel.value}:{normalized(channel, address)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:ADDRESS_HASH_HEX_CHARS]


def hashes_of(key: bytes, contact: Contact) -> dict[Channel, str]:
    """The address hash of every channel the contact can be reached on."""
    out: dict[Channel, str] = {}
    for channel in Channel:
        address = contact.address(channel)
        if address is not None:
            out[channel] = address_hash(key, channel, address)
    return out
