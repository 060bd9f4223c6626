"""The payment provider interface every implementation satisfies, and its outcomes.

Theory of operation: a provider is asked three things. ``charge`` moves money once per
idempotency key (the same key sent again never charges twice); ``status`` asks what
became of an earlier charge whose answer was lost; ``refund`` gives money back, once per
key. A charge either answers (``succeeded`` or ``declined``), or leaves its outcome
``pending`` (a timeout, a dropped connection, an ambiguous server error: money may have
moved), or raises ``ProviderUnavailable`` when the provider certainly did not act
(connection refused, 503, 429): only then may another provider be tried for the same
payment. Money is in integer minor units, currencies are ISO 4217 codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ChargeStatus(StrEnum):
    SUCCEEDED = "succeeded"  # money captured
    DECLINED = "declined"  # refused by the issuer or the provider; nothing captured
    PENDING = "pending"  # unknown: money may have moved; ask ``status`` later
    NOT_FOUND = "not_found"  # (``status`` only) the provider never saw this charge


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    """What a provider said about one charge."""

    status: ChargeStatus
    transaction_id: str = ""  # the provider's id of the payment (empty when unknown)
    last4: str | None = None  # last digits of the card, when the provider says
    decline_code: str = ""  # why a charge was declined (provider's code)

    @property
    def settled(self) -> bool:
        """True when the outcome is final (succeeded or declined)."""
        return self.status in (ChargeStatus.SUCCEEDED, ChargeStatus.DECLINED)


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One attempt to pay an order, as every provider receives it."""

    order_id: str
    amount_minor: int
    currency: str
    payment_method_token: str  # pm_...; never a card number
    idempotency_key: str  # one key per (order, attempt): a retry never charges twice


@dataclass(frozen=True, slots=True)
class ChargeRef:
    """What ``status`` needs to find an earlier charge again."""

    order_id: str
    idempotency_key: str
    amount_minor: int
    currency: str
    transaction_id: str = ""  # when a provider answered one


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    refund_id: str
    succeeded: bool


class ProviderUnavailable(Exception):
    """The provider certainly did not act on the request (safe to try another one)."""


class RefundFailed(Exception):
    """A refund was not confirmed; it is retried with the same idempotency key."""


class PaymentProvider(Protocol):
    """A payment service flashsale can charge through."""

    @property
    def name(self) -> str: ...

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Charge once per ``request.idempotency_key``; raises ProviderUnavailable only
        when nothing can have been charged."""
        ...

    async def status(self, ref: ChargeRef) -> ChargeOutcome:
        """What became of an earlier charge (NOT_FOUND: the provider never saw it)."""
        ...

    async def refund(
        self, transaction_id: str, amount_minor: int, currency: str, idempotency_key: str
    ) -> RefundOutcome:
        """Give ``amount_minor`` of a captured charge back; RefundFailed if unconfirmed."""
        ...

    async def close(self) -> None: ...
