"""Locust scenarios: the specification's shopper journey against one sale, and window
shoppers who only read.

Theory of operation. The harness (loadtests/run_load.py) creates one product whose sale
opens a few seconds after locust starts (``opens_at_ms``) and tells this file about it
through the environment:

- ``LOAD_PRODUCT``: the product id (default ``sale``);
- ``LOAD_SECRET``: the cluster secret, to sign shopper tokens here
  (gateway.identity.issue_token); when empty each shopper asks the gateway for a guest
  token (``POST /session/guest``, development mode only).

A ``Shopper`` is one person at a time: it views the product, polls the inventory until
the sale opens (read from the product's ``opens_at_ms`` and the local clock), then rushes:
add to cart, check out, pay, with think times between the steps. Afterwards the same
locust user comes back as a new shopper (a new user id: the sale's per-user limit is 1).
A share of shoppers tries to add a second unit, and a share of those arriving after the
sell-out clicks anyway, so the limit and sold-out answers are exercised too.

What counts as success: the scenario succeeds when the system answers as it should. A
sold-out, limit-reached, not-open, hold-expired or declined answer is an expected outcome
of a sale, not an error, and is marked a success; anything else that is not 2xx (a 5xx
after the retries, a 4xx the journey should never provoke, a refused connection) is a
failure. A 503 (shedding, no leader, commit unknown) is retried with the same
Idempotency-Key after its Retry-After, up to ``MAX_ATTEMPTS`` times.

Each outcome is also counted as a pseudo-request of type ``OUTCOME`` (zero time) so it
shows in locust's statistics and CSV: purchased, sold-out, limit-reached, retried-503...
The harness leaves those rows out of its request rates.
"""

from __future__ import annotations

import os
import random
import string
import time
import uuid
from typing import Any

from locust import FastHttpUser, between, task

from gateway.identity import issue_token

PRODUCT = os.environ.get("LOAD_PRODUCT", "sale")
SECRET = os.environ.get("LOAD_SECRET", "")
TOKEN_TTL_S = 3600
PAYMENT_METHOD = "pm_card_visa"
ADDRESS = {
    "address_line1": "1 Main St",
    "city": "Springfield",
    "postal_code": "12345",
    "country": "US",
}
MAX_ATTEMPTS = 5  # tries of one write, the first included, while it answers 503
MAX_RETRY_WAIT_S = 2.0  # cap on a Retry-After honoured between tries
POLL_S = (0.5, 1.0)  # pause between inventory polls while the sale has not opened
READ_THINK_S = (1.0, 3.0)  # looking at the product page
CART_THINK_S = (1.0, 3.0)  # from a unit in the cart to "checkout"
PAY_THINK_S = (1.0, 2.0)  # typing the card details
SECOND_UNIT_SHARE = 0.1  # shoppers who try a second unit (the per-user limit answers)
LATE_CLICK_SHARE = 0.3  # shoppers who click "add to cart" on a sold-out product anyway
OUTCOME = "OUTCOME"
USER_ID_LETTERS = 16  # 26**16 ids: no two shoppers of a run share one

# (status, problem type slug) answers that are a normal part of a sale.
EXPECTED = {
    (409, "sold-out"),
    (409, "limit-reached"),
    (409, "not-open"),
    (409, "sale-closed"),
    (410, "hold-expired"),
    (402, "payment-declined"),
}


def _think(bounds: tuple[float, float]) -> None:
    # locust monkey-patches time.sleep with gevent's: this parks the user, not the process.
    time.sleep(random.uniform(*bounds))


def _slug(doc: dict[str, Any]) -> str:
    return str(doc.get("type", "")).rsplit("/", 1)[-1]


class _Client(FastHttpUser):
    """The shared plumbing: tokens, outcome counters, writes retried through 503."""

    abstract = True

    def _outcome(self, name: str) -> None:
        self.environment.events.request.fire(
            request_type=OUTCOME,
            name=name,
            response_time=0,
            response_length=0,
            exception=None,
            context={},
        )

    def _token(self, user_id: str) -> tuple[str, str]:
        """(user id, bearer token) for a new shopper."""
        if SECRET:
            return user_id, issue_token(SECRET, user_id, TOKEN_TTL_S)
        with self.client.post(
            "/session/guest", name="POST /session/guest", catch_response=True
        ) as resp:
            doc = _doc(resp)
            if resp.status_code not in (200, 201):
                resp.failure(f"{resp.status_code} {_slug(doc)}")
                return user_id, ""
            return str(doc.get("user_id", user_id)), str(doc.get("token", ""))

    def _get(self, path: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.client.get(path, name=name, catch_response=True) as resp:
            doc = _doc(resp)
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code} {_slug(doc)}")
            return resp.status_code, doc

    def _write(
        self, path: str, body: dict[str, Any], token: str, *, ok: frozenset[int] = frozenset({200})
    ) -> tuple[int, dict[str, Any]]:
        """POST with one Idempotency-Key for every try; retries 503 after Retry-After."""
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
        name = f"POST {path}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            with self.client.post(
                path, json=body, headers=headers, name=name, catch_response=True
            ) as resp:
                status = resp.status_code
                doc = _doc(resp)
                slug = _slug(doc)
                if status == 503 and attempt < MAX_ATTEMPTS:
                    # Shed or unknown outcome: the same key returns the first outcome.
                    resp.success()
                    self._outcome(f"retried-503 {path}")
                    wait = _retry_after(resp.headers.get("Retry-After"))
                elif status in ok or (status, slug) in EXPECTED:
                    resp.success()
                    return status, doc
                else:
                    resp.failure(f"{status} {slug or doc.get('raw', '')}")
                    return status, doc
            time.sleep(wait * random.uniform(0.5, 1.0))
        return 503, {}


class Shopper(_Client):
    """View, wait for the opening, add to cart, check out, pay."""

    weight = 3
    wait_time = between(1.0, 5.0)  # before the next shopper arrives on this locust user

    @task
    def journey(self) -> None:
        user_id, token = self._token(_new_user_id())
        if not token:
            return
        status, product = self._get(f"/products/{PRODUCT}", "GET /products/{id}")
        if status != 200:
            return
        _think(READ_THINK_S)
        available = self._wait_for_opening(product)
        if available is None:
            return
        if available == 0 and random.random() >= LATE_CLICK_SHARE:
            self._outcome("left: saw sold out")
            return
        status, hold = self._write(
            "/add-to-cart",
            {"user_id": user_id, "product_id": PRODUCT, "quantity": 1},
            token,
        )
        if status != 200:
            self._outcome(_outcome_name(status, hold))
            return
        if random.random() < SECOND_UNIT_SHARE:
            status, again = self._write(
                "/add-to-cart",
                {"user_id": user_id, "product_id": PRODUCT, "quantity": 1},
                token,
            )
            self._outcome("second unit: " + _outcome_name(status, again))
        _think(CART_THINK_S)
        status, order = self._write(
            "/checkout",
            {
                "user_id": user_id,
                "cart_id": hold["cart_id"],
                "payment_method": PAYMENT_METHOD,
                "shipping_address": ADDRESS,
            },
            token,
        )
        if status != 200:
            self._outcome("checkout: " + _outcome_name(status, order))
            return
        _think(PAY_THINK_S)
        status, paid = self._write(
            "/payment",
            {"order_id": order["order_id"], "payment_method": PAYMENT_METHOD,
             "amount": order["amount"]},
            token,
            ok=frozenset({200, 202}),
        )  # fmt: skip
        self._outcome("purchased" if status == 200 else "payment: " + _outcome_name(status, paid))

    def _wait_for_opening(self, product: dict[str, Any]) -> int | None:
        """Poll the inventory until the sale is open; the units available then (None when
        the inventory did not answer)."""
        opens_at_ms = product.get("opens_at_ms")
        while True:
            status, inventory = self._get(f"/inventory/{PRODUCT}", "GET /inventory/{id}")
            if status != 200:
                return None
            if not isinstance(opens_at_ms, int) or time.time() * 1000 >= opens_at_ms:
                available = inventory.get("available_quantity")
                return available if isinstance(available, int) else 0
            _think(POLL_S)


class WindowShopper(_Client):
    """Reads only: the catalogue, the product page, the stock counter."""

    weight = 1
    wait_time = between(2.0, 6.0)

    @task(1)
    def catalogue(self) -> None:
        self._get("/products", "GET /products")

    @task(2)
    def product_page(self) -> None:
        self._get(f"/products/{PRODUCT}", "GET /products/{id}")

    @task(4)
    def stock(self) -> None:
        self._get(f"/inventory/{PRODUCT}", "GET /inventory/{id}")


def _new_user_id() -> str:
    # Letters only: a hex id can hold a run of 13+ digits that passes the Luhn check, and
    # the gateway refuses bodies holding what looks like a card number (gateway.cards).
    return "shopper-" + "".join(random.choices(string.ascii_lowercase, k=USER_ID_LETTERS))


def _doc(resp: Any) -> dict[str, Any]:
    try:
        value = resp.json()
    except (ValueError, TypeError):
        # Not JSON, or no body at all (a refused connection answers status 0).
        return {"raw": str(resp.text or "")[:200]}
    return value if isinstance(value, dict) else {"value": value}


def _retry_after(value: str | None) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(value or 1)))
    except ValueError:
        return 1.0


def _outcome_name(status: int, doc: dict[str, Any]) -> str:
    slug = _slug(doc)
    return f"{status} {slug}" if slug else str(status)
