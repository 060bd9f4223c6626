"""Paying an order: charge through the router, record the outcome in the ledger, settle.

Theory of operation (``PaymentService.pay``): the order is read from the leader; it must
be the shopper's, and the amount must equal the ledger's amount exactly. A completed
order answers as it is (no second charge); a failed one cannot be paid. Otherwise the
attempt number is the ledger's count of recorded attempts plus one, which names the
idempotency key every provider sees (payments.keys). Attempts this gateway left open
(unknown outcome, or charged but not yet recorded) are asked about first: while one is
still unknown the answer is "pending" and nothing is charged. Then the attempt is
written to the attempt store and the router charges. Its outcome is recorded with a
``record_payment`` command whose key is derived from the attempt, so the reconciler and
webhooks record the very same command, which the ledger applies once.

``settle`` is the one place an outcome meets the ledger. A success the ledger refuses
(the order expired: ``hold_expired``; it was paid by another transaction; it is
unknown) is refunded at once, with one refund key per transaction; a refund that fails
stays due and the reconciler retries it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from cluster.config import (
    DEV_PAYPAL_CLIENT_SECRET,
    DEV_STRIPE_API_KEY,
    ClusterConfig,
    ConfigError,
)
from payments.attempts import Attempt, AttemptState, AttemptStore, attempt_id
from payments.breaker import BreakerPolicy, CircuitBreaker
from payments.keys import attempt_key, ledger_payment_key, refund_key
from payments.money import to_minor
from payments.paypal_provider import PayPalProvider
from payments.provider import (
    ChargeOutcome,
    ChargeRef,
    ChargeRequest,
    ChargeStatus,
    PaymentProvider,
    RefundFailed,
)
from payments.router import PaymentRouter
from payments.stripe_provider import StripeProvider

log = logging.getLogger("payments.service")

ReadOrder = Callable[[str], Awaitable[Mapping[str, Any] | None]]  # order view or None
Record = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]]]  # command -> result


class UnknownOrder(Exception):
    """No such order, or not the caller's (the same answer for both)."""


class AmountMismatch(Exception):
    def __init__(self, amount_minor: int, currency: str) -> None:
        super().__init__(f"the order is for {amount_minor} {currency} (minor units)")
        self.amount_minor = amount_minor
        self.currency = currency


class OrderNotPayable(Exception):
    """The order failed (expired, or its payment failed): it cannot be paid any more."""

    def __init__(self, order_id: str, failure: str) -> None:
        super().__init__(f"order {order_id} failed ({failure or 'failed'})")
        self.order_id = order_id
        self.failure = failure


class PaymentsDisabled(Exception):
    """No payment provider is configured."""


@dataclass(frozen=True, slots=True)
class PaymentAnswer:
    """What /payment tells the shopper."""

    order_id: str
    kind: str  # "paid" | "declined" | "pending" | "refunded"
    payment_status: str  # "completed" | "failed" | "pending" (the public names)
    order_status: str  # "pending" | "completed" | "failed"
    transaction_id: str
    provider: str
    amount_minor: int
    currency: str
    attempts: int = 0
    decline_code: str = ""
    pay_by_ms: int | None = None
    last4: str | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    kind: str  # "recorded" | "refunded" | "refund_due" | "stale"
    result: Mapping[str, Any]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def answer_from_order(order: Mapping[str, Any]) -> PaymentAnswer:
    """The answer for an order already paid (or failed), without charging."""
    status = str(order.get("status", "pending"))
    payment = {"completed": "completed", "failed": "failed"}.get(status, "pending")
    return PaymentAnswer(
        order_id=str(order.get("order_id", "")),
        kind={"completed": "paid", "failed": "refunded"}.get(status, "pending"),
        payment_status=payment,
        order_status=status,
        transaction_id=str(order.get("transaction_id") or ""),
        provider=str(order.get("provider") or ""),
        amount_minor=_int(order.get("amount_minor")),
        currency=str(order.get("currency", "USD")),
        attempts=_int(order.get("payment_attempts")),
        pay_by_ms=_int(order.get("pay_by_ms")) or None,
    )


class _Listener:
    """Writes each attempt before its provider is asked (router.AttemptListener)."""

    def __init__(self, service: PaymentService, request: ChargeRequest, user_id: str, n: int):
        self.service = service
        self.request = request
        self.user_id = user_id
        self.n = n

    async def trying(self, provider: str) -> None:
        r = self.request
        await self.service.store.begin(
            order_id=r.order_id, user_id=self.user_id, attempt_no=self.n, provider=provider,
            idempotency_key=r.idempotency_key, amount_minor=r.amount_minor, currency=r.currency,
            now_ms=self.service.clock_ms(),
        )

    async def unavailable(self, provider: str, reason: str) -> None:
        aid = attempt_id(self.request.idempotency_key, provider)
        await self.service.store.update(aid, AttemptState.NOT_CHARGED, self.service.clock_ms())


class PaymentService:
    """Pays orders for one gateway; see the module docstring."""

    def __init__(
        self,
        router: PaymentRouter,
        store: AttemptStore,
        read_order: ReadOrder,
        record: Record,
        *,
        void_after_ms: int,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.router = router
        self.store = store
        self.read_order = read_order
        self.record = record
        self.void_after_ms = void_after_ms
        self.clock_ms = clock_ms
        self._in_flight: dict[str, asyncio.Future[PaymentAnswer]] = {}

    async def close(self) -> None:
        for provider in self.router.providers:
            await provider.close()
        await self.store.close()

    # -- /payment ----------------------------------------------------------------------

    async def _order(self, order_id: str, user_id: str | None) -> Mapping[str, Any]:
        order = await self.read_order(order_id)
        if order is None or (user_id is not None and order.get("user_id") != user_id):
            raise UnknownOrder(order_id)
        return order

    async def pay(
        self, user_id: str, order_id: str, payment_method: str, amount: Decimal
    ) -> PaymentAnswer:
        """Pay ``order_id`` for ``user_id`` (see the module docstring)."""
        if not self.router.providers:
            raise PaymentsDisabled("no payment provider is configured")
        order = await self._order(order_id, user_id)
        currency = str(order.get("currency", "USD"))
        expected = _int(order.get("amount_minor"))
        try:
            given = to_minor(amount, currency)
        except ValueError:
            given = -1
        if given != expected:
            raise AmountMismatch(expected, currency)
        if order.get("status") == "completed":
            return answer_from_order(order)
        if order.get("status") == "failed":
            raise OrderNotPayable(order_id, str(order.get("failure") or ""))
        running = self._in_flight.get(order_id)
        if running is not None:
            # A double click on this gateway: share the first request's outcome.
            return await asyncio.shield(running)
        future: asyncio.Future[PaymentAnswer] = asyncio.get_running_loop().create_future()
        self._in_flight[order_id] = future
        try:
            answer = await self._pay_pending(user_id, order, payment_method)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a lone request must not warn
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            del self._in_flight[order_id]

    async def _pay_pending(
        self, user_id: str, order: Mapping[str, Any], payment_method: str
    ) -> PaymentAnswer:
        order_id = str(order["order_id"])
        prefer: str | None = None
        settled_any = False
        for attempt in await self.store.of_order(order_id):
            if attempt.state not in (
                AttemptState.CHARGING, AttemptState.UNKNOWN, AttemptState.SUCCEEDED,
                AttemptState.DECLINED, AttemptState.REFUND_DUE,
            ):
                continue
            state, outcome = await self.reconcile_one(attempt, void_if_missing=True)
            if state in (AttemptState.UNKNOWN, AttemptState.CHARGING, AttemptState.SUCCEEDED):
                return self._pending(order, attempt.provider, outcome.transaction_id)
            if state is AttemptState.VOID:
                prefer = attempt.provider  # it may still hold the key: ask it first
            settled_any = True
        if settled_any:
            order = await self._order(order_id, user_id)
            if order.get("status") == "completed":
                return answer_from_order(order)
            if order.get("status") == "failed":
                raise OrderNotPayable(order_id, str(order.get("failure") or ""))
        n = _int(order.get("payment_attempts")) + 1
        request = ChargeRequest(
            order_id=order_id,
            amount_minor=_int(order.get("amount_minor")),
            currency=str(order.get("currency", "USD")),
            payment_method_token=payment_method,
            idempotency_key=attempt_key(order_id, n),
        )
        routed = await self.router.charge(
            request, _Listener(self, request, user_id, n), prefer=prefer
        )
        aid = attempt_id(request.idempotency_key, routed.provider)
        outcome = routed.outcome
        now = self.clock_ms()
        if outcome.status is not ChargeStatus.SUCCEEDED and outcome.status is not (
            ChargeStatus.DECLINED
        ):
            await self.store.update(aid, AttemptState.UNKNOWN, now,
                                    transaction_id=outcome.transaction_id)
            log.warning("payment outcome unknown; reconciling later",
                        extra={"order_id": order_id, "provider": routed.provider, "attempt": n})
            return self._pending(order, routed.provider, outcome.transaction_id)
        state = (AttemptState.SUCCEEDED if outcome.status is ChargeStatus.SUCCEEDED
                 else AttemptState.DECLINED)
        await self.store.update(aid, state, now, transaction_id=outcome.transaction_id,
                                decline_code=outcome.decline_code)
        attempt = Attempt(aid, order_id, user_id, n, routed.provider, request.idempotency_key,
                          request.amount_minor, request.currency, state,
                          outcome.transaction_id, outcome.decline_code, now, now, 0)
        try:
            settled = await self.settle(attempt)
        except Exception:
            if state is AttemptState.DECLINED:
                raise  # nothing moved: the shopper's retry replays the decline and records it
            log.exception("charged but not recorded yet; the reconciler records it",
                          extra={"order_id": order_id, "provider": routed.provider})
            return self._pending(order, routed.provider, outcome.transaction_id)
        return await self._answer(order, attempt, outcome, settled)

    def _pending(self, order: Mapping[str, Any], provider: str, txn: str) -> PaymentAnswer:
        return replace(answer_from_order(order), kind="pending", payment_status="pending",
                       order_status="pending", provider=provider, transaction_id=txn)

    async def _answer(
        self, order: Mapping[str, Any], attempt: Attempt, outcome: ChargeOutcome, settled: Settled
    ) -> PaymentAnswer:
        base = answer_from_order(order)
        if settled.kind == "recorded" and outcome.status is ChargeStatus.SUCCEEDED:
            result = settled.result
            return replace(base, kind="paid", payment_status="completed",
                           order_status=str(result.get("status", "completed")),
                           transaction_id=attempt.transaction_id, provider=attempt.provider,
                           attempts=max(base.attempts, attempt.attempt_no),
                           last4=outcome.last4)
        if settled.kind == "recorded":
            return replace(base, kind="declined", payment_status="failed",
                           order_status="pending", transaction_id=attempt.transaction_id,
                           provider=attempt.provider, attempts=attempt.attempt_no,
                           decline_code=attempt.decline_code or "declined")
        # Refunded, refund due, or stale: the ledger's order says what is true now.
        current = await self._order(attempt.order_id, None)
        if current.get("status") == "completed":
            return answer_from_order(current)
        if settled.kind in ("refunded", "refund_due"):
            return replace(answer_from_order(current), kind="refunded",
                           payment_status="failed", order_status="failed",
                           transaction_id=attempt.transaction_id, provider=attempt.provider)
        if current.get("status") == "failed":
            raise OrderNotPayable(attempt.order_id, str(current.get("failure") or ""))
        return self._pending(current, attempt.provider, attempt.transaction_id)

    # -- settling ----------------------------------------------------------------------

    async def settle(self, attempt: Attempt) -> Settled:
        """Record a succeeded/declined attempt in the ledger; refund what must be."""
        paid = attempt.state in (AttemptState.SUCCEEDED, AttemptState.REFUND_DUE)
        command = {
            "type": "record_payment",
            "key": ledger_payment_key(attempt.order_id, attempt.attempt_no, attempt.provider),
            "order_id": attempt.order_id,
            "outcome": "paid" if paid else "declined",
            "amount_minor": attempt.amount_minor,
            "provider": attempt.provider,
            "transaction_id": attempt.transaction_id,
        }
        if attempt.state is AttemptState.REFUND_DUE:
            return await self._refund(attempt, {})
        result = await self.record(command)
        if result.get("ok") is not False and result.get("type") != "rejected":
            await self._mark(attempt, AttemptState.RECORDED)
            return Settled("recorded", result)
        reason = str(result.get("reason", ""))
        if not paid:
            await self._mark(attempt, AttemptState.RECORDED)
            return Settled("stale", result)
        if reason in ("not_pending", "key_reused"):
            order = await self.read_order(attempt.order_id)
            if (order is not None and order.get("status") == "completed"
                    and order.get("transaction_id") == attempt.transaction_id):
                await self._mark(attempt, AttemptState.RECORDED)
                return Settled("recorded", result)
        log.warning(
            "the ledger refused a paid attempt; refunding",
            extra={"order_id": attempt.order_id, "provider": attempt.provider, "reason": reason},
        )
        return await self._refund(attempt, result)

    async def _refund(self, attempt: Attempt, result: Mapping[str, Any]) -> Settled:
        provider = self.router.provider(attempt.provider)
        await self._mark(attempt, AttemptState.REFUND_DUE)
        if provider is None:
            log.error("refund due through a provider no longer configured",
                      extra={"order_id": attempt.order_id, "provider": attempt.provider})
            return Settled("refund_due", result)
        try:
            await provider.refund(attempt.transaction_id, attempt.amount_minor,
                                  attempt.currency, refund_key(attempt.transaction_id))
        except RefundFailed as exc:
            log.warning("refund not confirmed; retrying later",
                        extra={"order_id": attempt.order_id, "reason": str(exc)})
            return Settled("refund_due", result)
        await self._mark(attempt, AttemptState.REFUNDED)
        log.info("refunded", extra={"order_id": attempt.order_id, "provider": attempt.provider,
                                    "transaction_id": attempt.transaction_id})
        return Settled("refunded", result)

    async def _mark(self, attempt: Attempt, state: AttemptState) -> None:
        # An attempt this gateway never wrote (a webhook's) has no row: the update of a
        # missing row changes nothing, so no read first (one store call per payment less).
        await self.store.update(attempt.attempt_id, state, self.clock_ms())

    # -- reconciling -------------------------------------------------------------------

    async def reconcile_one(
        self, attempt: Attempt, *, void_if_missing: bool = False
    ) -> tuple[AttemptState, ChargeOutcome]:
        """Move one open attempt on as far as the provider and the ledger allow.

        ``void_if_missing``: an attempt the provider never saw is given up at once (a
        shopper retrying sends the same key again) instead of after ``void_after_ms``.
        """
        provider = self.router.provider(attempt.provider)
        outcome = ChargeOutcome(ChargeStatus.PENDING, attempt.transaction_id)
        if provider is None:
            return attempt.state, outcome
        now = self.clock_ms()
        if attempt.state in (AttemptState.CHARGING, AttemptState.UNKNOWN):
            outcome = await provider.status(ChargeRef(
                attempt.order_id, attempt.idempotency_key, attempt.amount_minor,
                attempt.currency, attempt.transaction_id,
            ))
            if outcome.status is ChargeStatus.PENDING:
                await self.store.update(attempt.attempt_id, AttemptState.UNKNOWN, now,
                                        checked=True)
                return AttemptState.UNKNOWN, outcome
            if outcome.status is ChargeStatus.NOT_FOUND:
                order = await self.read_order(attempt.order_id)
                gone = order is None or order.get("status") != "pending"
                if void_if_missing or gone or now - attempt.created_ms >= self.void_after_ms:
                    await self.store.update(attempt.attempt_id, AttemptState.VOID, now,
                                            checked=True)
                    return AttemptState.VOID, outcome
                await self.store.update(attempt.attempt_id, AttemptState.UNKNOWN, now,
                                        checked=True)
                return AttemptState.UNKNOWN, outcome
            state = (AttemptState.SUCCEEDED if outcome.status is ChargeStatus.SUCCEEDED
                     else AttemptState.DECLINED)
            await self.store.update(attempt.attempt_id, state, now, checked=True,
                                    transaction_id=outcome.transaction_id,
                                    decline_code=outcome.decline_code)
            attempt = replace(attempt, state=state, transaction_id=outcome.transaction_id,
                              decline_code=outcome.decline_code)
        else:
            status = {AttemptState.DECLINED: ChargeStatus.DECLINED}.get(
                attempt.state, ChargeStatus.SUCCEEDED)
            outcome = ChargeOutcome(status, attempt.transaction_id,
                                    decline_code=attempt.decline_code)
        settled = await self.settle(attempt)
        final = {"recorded": AttemptState.RECORDED, "stale": AttemptState.RECORDED,
                 "refunded": AttemptState.REFUNDED}.get(settled.kind, AttemptState.REFUND_DUE)
        return final, outcome

    async def settle_notice(
        self, *, provider: str, order_id: str, attempt_no: int, key: str, succeeded: bool,
        transaction_id: str, amount_minor: int, currency: str,
    ) -> Settled:
        """Settle what a verified webhook reports (this gateway may never have seen it)."""
        aid = attempt_id(key, provider)
        known = await self.store.get(aid)
        now = self.clock_ms()
        state = AttemptState.SUCCEEDED if succeeded else AttemptState.DECLINED
        attempt = Attempt(aid, order_id, known.user_id if known else "", attempt_no, provider,
                          key, amount_minor, currency, state, transaction_id, "", now, now, 0)
        if known is not None:
            if known.state in (AttemptState.RECORDED, AttemptState.REFUNDED):
                return Settled("stale", {})
            await self.store.update(aid, state, now, transaction_id=transaction_id)
        return await self.settle(attempt)


def build_providers(config: ClusterConfig) -> list[PaymentProvider]:
    """The configured providers, in the configured order."""
    p = config.payments
    dev = {
        "stripe": p.stripe_api_key.reveal() == DEV_STRIPE_API_KEY,
        "paypal": p.paypal_client_secret.reveal() == DEV_PAYPAL_CLIENT_SECRET,
    }
    if config.mode == "production" and any(dev[name] for name in p.providers):
        raise ConfigError(
            "payments: production mode refuses the development sandbox credentials (set "
            "FLASHSALE_PAYMENTS__STRIPE_API_KEY / FLASHSALE_PAYMENTS__PAYPAL_CLIENT_SECRET)"
        )
    timeout_s = p.charge_timeout_ms / 1000
    made: dict[str, PaymentProvider] = {
        "stripe": StripeProvider(p.stripe_api_base, p.stripe_api_key.reveal(),
                                 timeout_s=timeout_s),
        "paypal": PayPalProvider(p.paypal_api_base, p.paypal_client_id,
                                 p.paypal_client_secret.reveal(), timeout_s=timeout_s),
    }
    return [made[name] for name in p.providers]


def build_service(
    config: ClusterConfig,
    gateway_id: str,
    read_order: ReadOrder,
    record: Record,
    *,
    providers: list[PaymentProvider] | None = None,
) -> PaymentService:
    """The payment service of gateway ``gateway_id`` (its attempts under its data dir)."""
    p = config.payments
    chosen = build_providers(config) if providers is None else providers
    policy = BreakerPolicy(p.breaker_failure_threshold, p.breaker_cooldown_ms)
    router = PaymentRouter(chosen, {prov.name: CircuitBreaker(policy) for prov in chosen})
    store = AttemptStore(config.data_dir / "gateways" / gateway_id / "payments.db")
    return PaymentService(router, store, read_order, record, void_after_ms=p.void_after_ms)
