"""The text form of a sealed value: ``v1.<key_id>.<user_id>.<payload>``.

Theory of operation: a sealed value is self-describing. ``v1`` names the scheme
(AES-256-GCM, see ``pii.aead``); ``key_id`` names the shopper's data key, so a reader
knows which key to fetch (and, once the key is destroyed, that it was erased rather than
tampered with); ``user_id`` says whose data it is, in clear, because the order carries it
anyway and the cipher binds it as associated data, so a value moved to another shopper's
record fails to open; ``payload`` is unpadded url-safe base64 of nonce + ciphertext + tag.

Key ids never contain a dot and base64url has none, so a user id with dots still parses:
the key id ends at the first dot after ``v1.``, the payload starts after the last dot.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from pii.errors import MalformedSealed

SCHEME = "v1"
PREFIX = SCHEME + "."
NONCE_BYTES = 12  # AES-GCM's standard nonce
TAG_BYTES = 16  # AES-GCM's authentication tag
KEY_ID_PATTERN = re.compile(r"dk[0-9a-f]{16,32}")  # as made by pii.aead.new_key_id
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Sealed:
    """A parsed sealed value."""

    key_id: str
    user_id: str
    payload: bytes  # nonce + ciphertext + tag

    def text(self) -> str:
        body = base64.urlsafe_b64encode(self.payload).rstrip(b"=").decode("ascii")
        return f"{PREFIX}{self.key_id}.{self.user_id}.{body}"


def is_sealed(text: str) -> bool:
    """Whether ``text`` looks like a sealed value (cheap; ``parse`` checks it all)."""
    return text.startswith(PREFIX)


def parse(text: str) -> Sealed:
    """The parts of a sealed value; ``MalformedSealed`` says what is wrong."""
    if not text:
        raise MalformedSealed("there is no sealed value (empty text)")
    if not text.startswith(PREFIX):
        raise MalformedSealed(f"not a sealed value of scheme {SCHEME} (it starts {text[:8]!r}...)")
    key_id, dot, rest = text[len(PREFIX) :].partition(".")
    user_id, dot2, body = rest.rpartition(".")
    if not dot or not dot2 or not KEY_ID_PATTERN.fullmatch(key_id) or not user_id:
        raise MalformedSealed("a sealed value is v1.<key_id>.<user_id>.<payload>")
    if not _BASE64URL.fullmatch(body):
        raise MalformedSealed("the payload of the sealed value is not base64url")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise MalformedSealed("the payload of the sealed value is not base64url") from None
    if len(payload) < NONCE_BYTES + TAG_BYTES:
        raise MalformedSealed("the payload of the sealed value is too short")
    return Sealed(key_id, user_id, payload)


def key_id_of(text: str) -> str | None:
    """The data key id of a well-formed sealed value, else None."""
    try:
        return parse(text).key_id
    except MalformedSealed:
        return None
