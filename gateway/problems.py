"""Every error the gateway answers, as ``application/problem+json`` (RFC 9457).

Theory of operation: handlers raise ``Problem`` (or let a cluster error, an aiohttp
HTTP exception or a bug escape); ``problem_answer`` (called by the gateway's front
door, gateway.front_door) turns each into a problem document with a stable ``type``
URI. The mapping from ledger refusal reasons and from cluster failures (no leader,
unknown commit) to HTTP status and type lives in this module and nowhere else.

Status choices worth a word:
- ``not_open``/``closed`` are 409 Conflict, not 403: the shopper is allowed to buy, the
  product's state (its sale window) is what conflicts with the request.
- ``not_owner`` is answered exactly like the matching ``unknown_*`` (404, same type and
  detail), so a shopper cannot learn that another shopper's hold, cart or order exists.
- ``hold_expired`` is 410 Gone: the hold existed and will not come back.
- A commit whose outcome is unknown is 503 with Retry-After and tells the client to
  retry with the same Idempotency-Key: the retry returns the first outcome.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from cluster.errors import (
    ClusterError,
    CommitUnknown,
    InvalidCommand,
    NoLeader,
    NotFound,
    Overloaded,
    Unreachable,
)
from ledger.reasons import Reason
from payments.router import NoProviderAvailable
from payments.service import AmountMismatch, OrderNotPayable, PaymentsDisabled, UnknownOrder
from payments.webhooks import BadWebhook

log = logging.getLogger("gateway.problems")

PROBLEM_BASE = "https://flashsale.dev/problems/"
CONTENT_TYPE = "application/problem+json"
RETRY_AFTER_S = 1  # what 503 answers ask clients to wait before retrying


class Problem(Exception):
    """An error answer: HTTP status, a stable type slug, a title, a detail, extensions."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(f"{status} {slug}: {detail or title}")
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        doc.update(self.extensions)
        return doc

    def encode(self, instance: str | None = None) -> bytes:
        """The problem document's bytes (what ``response`` sends)."""
        doc = self.body()
        if instance is not None:
            doc.setdefault("instance", instance)
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def response(self, instance: str | None = None) -> web.Response:
        return encoded_response(self.status, self.encode(instance), self.headers)


def encoded_response(status: int, body: bytes, headers: Mapping[str, str]) -> web.Response:
    """A problem answer from bytes ``Problem.encode`` made (kept, for answers sent often
    alike: the edge cache's sold-out refusal)."""
    return web.Response(status=status, body=body, content_type=CONTENT_TYPE, headers=headers)


def _retry_headers() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)}


# -- transport and input problems ------------------------------------------------------


def invalid_input(detail: str, *, field: str | None = None) -> Problem:
    extra: dict[str, Any] = {} if field is None else {"field": field}
    return Problem(422, "invalid-input", "Invalid input", detail, **extra)


def malformed_json(detail: str) -> Problem:
    return Problem(400, "malformed-json", "Malformed JSON body", detail)


def body_too_large(limit_bytes: int) -> Problem:
    return Problem(
        413, "body-too-large", "Request body too large", f"at most {limit_bytes} bytes"
    )


def body_timeout(limit_s: float) -> Problem:
    return Problem(
        408, "request-timeout", "Request body too slow", f"send the body within {limit_s:g} s"
    )


def card_number_refused() -> Problem:
    return Problem(
        422,
        "card-number-refused",
        "Card numbers are not accepted",
        "the request contains what looks like a card number; flashsale takes payment "
        "method tokens from your payment provider (pm_...), never card numbers",
    )


def unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="flashsale"'},
    )


def user_mismatch() -> Problem:
    return Problem(
        403, "user-mismatch", "Forbidden", "user_id does not match the bearer token's user"
    )


def not_found(thing: str, thing_id: str) -> Problem:
    """The one answer for 'unknown' and 'not yours' (see the module docstring)."""
    return Problem(404, f"unknown-{thing}", f"Unknown {thing}", f"no {thing} {thing_id!r}")


def sold_out(product_id: str, *, available: int, index: int | None = None) -> Problem:
    extra: dict[str, Any] = {"product_id": product_id, "available": available}
    if index is not None:
        extra["ledger_index"] = index
    return Problem(409, "sold-out", "Sold out", f"product {product_id!r} is sold out", **extra)


def overloaded(detail: str) -> Problem:
    return Problem(503, "overloaded", "Gateway overloaded", detail, headers=_retry_headers())


def no_leader(detail: str) -> Problem:
    return Problem(
        503,
        "no-leader",
        "No leader",
        detail or "the cluster is electing a leader; retry shortly",
        headers=_retry_headers(),
    )


def commit_unknown() -> Problem:
    return Problem(
        503,
        "commit-unknown",
        "Outcome unknown",
        "the cluster could not confirm whether the request was applied; retry with the "
        "same Idempotency-Key to learn its outcome",
        headers=_retry_headers(),
    )


def unavailable(detail: str) -> Problem:
    return Problem(503, "unavailable", "Service unavailable", detail, headers=_retry_headers())


# -- lists, rate limits and heuristics (gateway.defences) ------------------------------


def rate_limited(retry_after_s: float, limit: str) -> Problem:
    """429: a token bucket (``limit``: ip, shopper or token) is empty; Retry-After says
    when it holds a token again (whole seconds, at least 1)."""
    wait = max(1, math.ceil(retry_after_s))
    return Problem(
        429,
        "rate-limited",
        "Too many requests",
        f"the {limit} rate limit is reached; retry after {wait} s",
        headers={"Retry-After": str(wait)},
        limit=limit,
        retry_after_s=wait,
    )


def blocked(reasons: list[str], score: int | None = None) -> Problem:
    """403: a block list or the heuristics' score refuses the client."""
    extra: dict[str, Any] = {} if score is None else {"score": score}
    return Problem(
        403,
        "blocked",
        "Blocked",
        "this client is refused as a likely bot: " + ", ".join(reasons),
        reasons=reasons,
        **extra,
    )


def invalid_bot_settings(detail: str, *, field: str | None = None) -> Problem:
    """400 from the internal bots API: a setting, list or value it does not accept."""
    extra: dict[str, Any] = {} if not field else {"field": field}
    return Problem(400, "invalid-bot-settings", "Invalid bot settings", detail, **extra)


def bots_disabled() -> Problem:
    return Problem(
        409,
        "bots-disabled",
        "Bot defences are off",
        "[bots] enabled = false in cluster.toml: there is nothing to change on this gateway",
    )


# -- proof of work and the waiting room (gateway.admission) ----------------------------

CHALLENGE_PATH = "/challenge"  # where a client gets a proof-of-work challenge
QUEUE_PATH = "/queue"  # where a client takes a waiting-room ticket


def challenge_required() -> Problem:
    return Problem(
        403,
        "challenge-required",
        "Proof of work required",
        f"solve a challenge from GET {CHALLENGE_PATH} and send the solution in X-Altcha",
        challenge=CHALLENGE_PATH,
    )


def challenge_invalid(detail: str) -> Problem:
    return Problem(
        403, "challenge-invalid", "Invalid proof of work", detail, challenge=CHALLENGE_PATH
    )


def challenge_replayed() -> Problem:
    return Problem(
        403,
        "challenge-replayed",
        "Proof of work already used",
        f"each solution is accepted once; solve a new challenge from GET {CHALLENGE_PATH}",
        challenge=CHALLENGE_PATH,
    )


def admission_required(detail: str) -> Problem:
    return Problem(
        403,
        "admission-required",
        "Waiting-room admission required",
        f"{detail}; take a ticket with POST {QUEUE_PATH}, follow it with "
        f"GET {QUEUE_PATH}/{{ticket}} and send the admission token in X-Admission",
        queue=QUEUE_PATH,
    )


def admission_not_yours() -> Problem:
    """403: the admission token was handed out to another shopper (places are personal)."""
    return Problem(
        403,
        "admission-not-yours",
        "Admission belongs to another shopper",
        f"this admission token was given to another shopper; a place in line is personal: "
        f"take your own ticket with POST {QUEUE_PATH} under your bearer token",
        queue=QUEUE_PATH,
    )


def ticket_invalid(detail: str) -> Problem:
    return Problem(403, "ticket-invalid", "Invalid queue ticket", detail, queue=QUEUE_PATH)


def admission_expired() -> Problem:
    return Problem(
        410,
        "admission-expired",
        "Admission expired",
        f"this ticket's admission ran out; take a new ticket with POST {QUEUE_PATH}",
        queue=QUEUE_PATH,
    )


def queue_not_open(queue_opens_at_ms: int, opens_at_ms: int, retry_after_s: int) -> Problem:
    return Problem(
        409,
        "queue-not-open",
        "The waiting room is not open yet",
        "tickets are handed out shortly before the sale opens",
        headers={"Retry-After": str(retry_after_s)},
        queue_opens_at_ms=queue_opens_at_ms,
        opens_at_ms=opens_at_ms,
    )


# -- payments --------------------------------------------------------------------------


def payment_declined(**extensions: Any) -> Problem:
    """402: the provider declined the charge; the shopper may retry until the deadline."""
    return Problem(
        402,
        "payment-declined",
        "Payment declined",
        "the payment method was declined; retry with another one before the deadline",
        **extensions,
    )


def payment_refunded(**extensions: Any) -> Problem:
    """410: the charge succeeded after the order's deadline and was refunded."""
    return Problem(
        410,
        "hold-expired",
        "Hold expired",
        "the order was not paid by its deadline; the charge was refunded",
        refunded=True,
        **extensions,
    )


def payments_unavailable(detail: str) -> Problem:
    return Problem(
        503, "payments-unavailable", "Payments unavailable", detail, headers=_retry_headers()
    )


def _payment_problem(exc: Exception) -> Problem | None:
    if isinstance(exc, UnknownOrder):
        return not_found("order", str(exc))
    if isinstance(exc, AmountMismatch):
        return Problem(
            422,
            "amount-mismatch",
            "Amount does not match the order",
            "amount must equal the order's amount",
            field="amount",
            amount_minor=exc.amount_minor,
            currency=exc.currency,
        )
    if isinstance(exc, OrderNotPayable):
        extra: dict[str, Any] = {
            "order_id": exc.order_id, "payment_status": "failed", "order_status": "failed"
        }
        if exc.failure == "expired":
            return Problem(
                410, "hold-expired", "Hold expired",
                "the order was not paid by its deadline; its units went back on sale", **extra,
            )
        return Problem(409, "not-pending", "Order is not pending", str(exc), **extra)
    if isinstance(exc, NoProviderAvailable):
        # Nothing was charged: a retry is safe.
        return payments_unavailable("no payment provider is reachable; nothing was charged")
    if isinstance(exc, PaymentsDisabled):
        return payments_unavailable("payments are not configured on this gateway")
    if isinstance(exc, BadWebhook):
        return Problem(400, "invalid-webhook", "Invalid webhook", str(exc))
    return None


# -- ledger refusals -------------------------------------------------------------------

# reason -> (status, type slug, title). not_owner is handled apart (see not_found).
_REASONS: dict[str, tuple[int, str, str]] = {
    Reason.SOLD_OUT: (409, "sold-out", "Sold out"),
    Reason.LIMIT_REACHED: (409, "limit-reached", "Per-shopper limit reached"),
    Reason.NOT_OPEN: (409, "not-open", "Sale not open yet"),
    Reason.CLOSED: (409, "sale-closed", "Sale closed"),
    Reason.HOLD_EXPIRED: (410, "hold-expired", "Hold expired"),
    Reason.UNKNOWN_HOLD: (404, "unknown-hold", "Unknown hold"),
    Reason.UNKNOWN_PRODUCT: (404, "unknown-product", "Unknown product"),
    Reason.UNKNOWN_CART: (404, "unknown-cart", "Unknown cart"),
    Reason.UNKNOWN_ORDER: (404, "unknown-order", "Unknown order"),
    Reason.INVALID: (422, "invalid-input", "Invalid input"),
    Reason.ALREADY_EXISTS: (409, "already-exists", "Already exists"),
    Reason.EMPTY_CART: (409, "empty-cart", "Cart has no active hold"),
    Reason.NOT_PENDING: (409, "not-pending", "Order is not pending"),
    Reason.KEY_REUSED: (
        422,
        "key-reused",
        "Idempotency-Key reused for a different request",
    ),
    Reason.AMOUNT_MISMATCH: (422, "amount-mismatch", "Amount does not match the order"),
}

# For not_owner and unknown_*: what the command was about (thing, id field).
_SUBJECT: dict[str, tuple[str, str]] = {
    "reserve": ("product", "product_id"),
    "release": ("hold", "hold_id"),
    "checkout": ("cart", "cart_id"),
    "record_payment": ("order", "order_id"),
}
_UNKNOWN_REASONS = {
    Reason.UNKNOWN_HOLD: "hold",
    Reason.UNKNOWN_PRODUCT: "product",
    Reason.UNKNOWN_CART: "cart",
    Reason.UNKNOWN_ORDER: "order",
}


def rejection(command: Mapping[str, Any], result: Mapping[str, Any]) -> Problem:
    """The problem for a ledger ``rejected`` result of ``command``."""
    reason = str(result.get("reason", ""))
    message = str(result.get("message", ""))
    if reason == Reason.NOT_OWNER or reason in _UNKNOWN_REASONS:
        thing, id_field = _SUBJECT.get(str(command.get("type")), ("resource", "id"))
        if reason in _UNKNOWN_REASONS:
            thing = _UNKNOWN_REASONS[Reason(reason)]
            id_field = f"{thing}_id"
        return not_found(thing, str(command.get(id_field, "")))
    if reason == Reason.SOLD_OUT:
        available = result.get("available")
        return sold_out(
            str(command.get("product_id", "")),
            available=available if isinstance(available, int) else 0,
        )
    status, slug, title = _REASONS.get(reason, (409, "rejected", "Request refused"))
    return Problem(status, slug, title, message, reason=reason)


# -- exceptions as problems ------------------------------------------------------------

_HTTP_SLUGS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def from_exception(exc: BaseException) -> Problem | None:
    """The problem for an exception that escaped a handler; None for a bug."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, Exception) and (payment := _payment_problem(exc)) is not None:
        return payment
    if isinstance(exc, Overloaded):  # before NoLeader, which it refines
        return overloaded("the ledger cluster is overloaded; retry shortly")
    if isinstance(exc, NoLeader):
        return no_leader("")
    if isinstance(exc, CommitUnknown):
        return commit_unknown()
    if isinstance(exc, InvalidCommand):
        return invalid_input(exc.detail)
    if isinstance(exc, NotFound):
        return Problem(404, "not-found", "Not found", "")
    if isinstance(exc, Unreachable):
        return unavailable("no ledger node answered; retry shortly")
    if isinstance(exc, ClusterError):
        return unavailable("the ledger cluster failed to answer; retry shortly")
    if isinstance(exc, TimeoutError):
        return unavailable("the request did not finish within its deadline")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return Problem(413, "body-too-large", "Request body too large", exc.text or "")
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        slug, title = _HTTP_SLUGS.get(exc.status, ("http-error", exc.reason))
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        detail = exc.text or ""
        if detail == f"{exc.status}: {exc.reason}":
            detail = ""  # aiohttp's default text says no more than the title
        return Problem(exc.status, slug, title, detail, headers=headers)
    return None


def problem_answer(request: web.Request, exc: Exception) -> web.Response | None:
    """The problem+json answer for an exception that left a handler; None for an aiohttp
    HTTP exception below 400 (a redirect, for the caller to re-raise). Call it inside
    the ``except`` block: a bug is logged with its traceback."""
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        problem = from_exception(exc) or Problem(exc.status, "http-error", exc.reason)
        return problem.response(request.path)
    mapped = from_exception(exc)
    if mapped is None:
        # The request body is deliberately not logged: it may hold personal data.
        log.exception("unhandled error", extra={"path": request.path})
        mapped = Problem(500, "internal", "Internal error", "")
    return mapped.response(request.path)
