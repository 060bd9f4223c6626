"""The idempotency keys of payments, all derived from the order and the attempt number.

Theory of operation: attempt ``n`` of order ``o`` is ``order:o:attempt:n`` at every
provider, whichever gateway sends it, so two gateways (or a shopper's double click)
paying the same attempt reach the provider with one key and are charged once. ``n`` is
the ledger's count of recorded attempts plus one: a decline recorded in the ledger moves
the next try to a new key. The ledger command recording an attempt's outcome has a key
derived from (order, attempt, provider): the gateway that charged, its reconciler and a
webhook arriving at any gateway all record the very same command, which the ledger
applies once. Ledger keys begin with ``~``, which no shopper key can (user ids start
with a letter or digit), so they never collide. Pure functions.
"""

from __future__ import annotations

import hashlib
import re

from ledger.limits import MAX_ID_LEN

_ATTEMPT_KEY = re.compile(r"order:(?P<order>.+):attempt:(?P<n>[1-9][0-9]{0,8})")


def attempt_key(order_id: str, attempt_no: int) -> str:
    """The provider idempotency key of attempt ``attempt_no`` (1, 2, ...) of an order."""
    if attempt_no < 1:
        raise ValueError(f"attempt_no={attempt_no}: expected >= 1")
    return f"order:{order_id}:attempt:{attempt_no}"


def parse_attempt_key(key: str) -> tuple[str, int] | None:
    """(order id, attempt number) of an attempt key; None for anything else."""
    match = _ATTEMPT_KEY.fullmatch(key)
    if match is None:
        return None
    return match.group("order"), int(match.group("n"))


def ledger_payment_key(order_id: str, attempt_no: int, provider: str) -> str:
    """The ledger idempotency key of the record_payment command for one attempt."""
    plain = f"~pay:{order_id}:{attempt_no}:{provider}"
    if len(plain) <= MAX_ID_LEN:
        return plain
    digest = hashlib.sha256(f"{order_id}\n{attempt_no}\n{provider}".encode()).hexdigest()
    return f"~pay#{digest}"


def refund_key(transaction_id: str) -> str:
    """One refund per captured transaction, whoever asks for it."""
    return f"refund:{transaction_id}"
