"""The cryptography of personal data: AES-256-GCM, for data and for wrapping keys.

Theory of operation: each shopper has a random 256-bit data key. Two subkeys are derived
from it with HKDF-SHA256: one encrypts (AES-256-GCM), one makes nonces. Data is sealed
with a *synthetic* nonce, HMAC-SHA256(nonce key, aad || plaintext) cut to 96 bits (the
SIV idea): the same details of the same shopper seal to the same text, so a checkout the
gateway retries carries the very same command and its idempotency key still matches,
and two different plaintexts get the same nonce only by a 2^-96 accident. The only thing
it reveals is that two sealed values of one shopper hold identical details.

The associated data binds the scheme, the data key id and the user id: a sealed value
copied onto another shopper's order, or paired with another key, fails authentication.

A data key is stored wrapped: AES-256-GCM under a master key with a random nonce, the
associated data binding user id, data key id and master key id, so a wrapped key moved
to another row does not open either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cluster.config import MasterKey
from pii.envelope import NONCE_BYTES, SCHEME
from pii.errors import TamperedError

DATA_KEY_BYTES = 32  # AES-256
_SEAL_LABEL = b"flashsale/pii/seal/" + SCHEME.encode()
_WRAP_LABEL = b"flashsale/pii/wrap/v1"
_ENC_INFO = b"flashsale/pii/v1/encrypt"
_NONCE_INFO = b"flashsale/pii/v1/nonce"


def new_key_id() -> str:
    """A fresh data key id (random: ids say nothing about the shopper)."""
    return "dk" + secrets.token_hex(8)


def new_data_key_secret() -> bytes:
    return secrets.token_bytes(DATA_KEY_BYTES)


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _join(*parts: str) -> bytes:
    # NUL cannot occur in ids (they are printable), so the join is unambiguous.
    return b"\x00".join(p.encode("utf-8") for p in parts)


@dataclass(frozen=True, slots=True)
class DataKey:
    """One shopper's data key, unwrapped (it lives only in memory)."""

    user_id: str
    key_id: str
    secret: bytes = field(repr=False)
    _cipher: AESGCM = field(init=False, repr=False, compare=False)
    _nonce_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) != DATA_KEY_BYTES:
            raise ValueError(f"a data key has {DATA_KEY_BYTES} bytes, not {len(self.secret)}")
        object.__setattr__(self, "_cipher", AESGCM(_derive(self.secret, _ENC_INFO)))
        object.__setattr__(self, "_nonce_key", _derive(self.secret, _NONCE_INFO))

    def _aad(self) -> bytes:
        return _SEAL_LABEL + b"\x00" + _join(self.key_id, self.user_id)

    def encrypt(self, plaintext: bytes) -> bytes:
        """nonce + ciphertext + tag of ``plaintext`` (deterministic, see the module doc)."""
        aad = self._aad()
        mac = hmac.new(self._nonce_key, aad + b"\x00" + plaintext, hashlib.sha256)
        nonce = mac.digest()[:NONCE_BYTES]
        return nonce + self._cipher.encrypt(nonce, plaintext, aad)

    def decrypt(self, payload: bytes) -> bytes:
        """The plaintext of ``payload``; ``TamperedError`` when it does not authenticate."""
        nonce, body = payload[:NONCE_BYTES], payload[NONCE_BYTES:]
        try:
            return self._cipher.decrypt(nonce, body, self._aad())
        except InvalidTag:
            raise TamperedError(
                f"sealed value of {self.user_id!r} under key {self.key_id} does not "
                "authenticate: it was altered or belongs to another shopper"
            ) from None


def _wrap_aad(user_id: str, key_id: str, master_key_id: str) -> bytes:
    return _WRAP_LABEL + b"\x00" + _join(user_id, key_id, master_key_id)


def wrap(master: MasterKey, key: DataKey) -> bytes:
    """``key``'s secret encrypted under ``master`` (nonce + ciphertext + tag)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    aad = _wrap_aad(key.user_id, key.key_id, master.key_id)
    return nonce + AESGCM(master.secret).encrypt(nonce, key.secret, aad)


def unwrap(master: MasterKey, user_id: str, key_id: str, wrapped: bytes) -> DataKey:
    """The data key wrapped in ``wrapped``; ``TamperedError`` when it does not open."""
    aad = _wrap_aad(user_id, key_id, master.key_id)
    try:
        secret = AESGCM(master.secret).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
    except InvalidTag:
        raise TamperedError(
            f"wrapped data key {key_id} of {user_id!r} does not open under master key "
            f"{master.key_id}: the row was altered or moved"
        ) from None
    return DataKey(user_id, key_id, secret)
