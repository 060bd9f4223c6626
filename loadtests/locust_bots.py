"""Locust scenario: shoppers and bots side by side, against a sale with the bot defences on.

Theory of operation. The harness (loadtests/run_bots.py) starts a cluster with every
defence of ``[bots]`` on, creates one product whose sale opens a few seconds after locust
starts, and passes through the environment:

- ``LOAD_PRODUCT``, ``LOAD_SECRET`` (to sign bearer tokens here, gateway.identity) and
  ``LOAD_OPENS_AT_MS`` (the opening, Unix milliseconds: bots start there);
- ``LOAD_BOTS`` = ``swarm,scripted,replay,farm`` counts of locust users of each bot kind
  (default ``5,3,2,2``); every other user is a shopper.

**Shoppers** play the whole journey of a person's browser (loadtests/browser.py): the
product page, the stock, a waiting-room ticket polled until admitted, a proof-of-work
challenge solved and held until its ``use_after_ms``, add to cart, think, checkout,
think, pay. Each journey is a new person: a new shopper id (``shopper-...``) and a new
source address, 127.0.x.y (the gateway's limits are per client IP and everything runs on
one machine; all of 127.0.0.0/8 is loopback on Linux, so binding the client socket to
127.0.3.7 is enough for the gateway to see a client at 127.0.3.7).

**Bots** start at the opening second and do not think. Each kind has its own user id
prefix, so the ledger says who got what:

- ``bot-swarm-*``: many clients from one address (127.66.1.1) hammering ``POST
  /add-to-cart`` with a bearer token and a browser's User-Agent, but no admission token
  and no proof of work;
- ``bot-script-*``: one address each (127.66.2.x), python-requests' User-Agent, solve
  every challenge and write at once, but skip the waiting room;
- ``bot-replay-*``: one address each (127.66.3.x), a browser's User-Agent, a new account
  for every try, each waiting in line for its own admission like everybody (a place in
  line is personal), then spending no work of its own: it sends one solution that was
  already used (the first one a shopper of this process spent, as a solution sniffed on
  the wire or resold by a solving service to many buyers would be);
- ``bot-farm-*``: all from one address (127.66.4.1), a browser's User-Agent, a new
  account for every hold, each queued for its own admission (polling every 0.1 s) and
  holding with a freshly solved challenge sent as soon as it is solved; a hold that
  succeeds is checked out and paid at once.

Every answer is also counted as a zero-time pseudo-request of type ``ANSWER`` named
``<class> <METHOD> <path> -> <status> <problem type>`` (class: shopper, bot-swarm, ...),
which the harness turns into the per-class table of outcomes; journey outcomes are
``OUTCOME`` pseudo-requests as in loadtests/locustfile.py. For a shopper, a refusal by
a defence (429, or 403 blocked / admission / challenge) is a locust failure: the
defences must never turn a person away. For a bot it is the expected answer.
"""

from __future__ import annotations

import itertools
import os
import random
import string
import time
import uuid
from collections.abc import Mapping
from typing import Any

from locust import HttpUser, between, constant, task
from locust.clients import LocustHttpAdapter
from urllib3 import PoolManager

from gateway.identity import issue_token
from loadtests.browser import BROWSER_UA, Solution, poll_after_s, shopper_address, solution

PRODUCT = os.environ.get("LOAD_PRODUCT", "sale")
SECRET = os.environ.get("LOAD_SECRET", "")
OPENS_AT_S = int(os.environ.get("LOAD_OPENS_AT_MS", "0")) / 1000
_COUNTS = [int(n) for n in os.environ.get("LOAD_BOTS", "5,3,2,2").split(",")]
SWARM, SCRIPTED, REPLAY, FARM = [*_COUNTS, 0, 0, 0, 0][:4]

TOKEN_TTL_S = 3600
PAYMENT_METHOD = "pm_card_visa"
ADDRESS = {"address_line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
           "country": "US"}  # fmt: skip
MAX_ATTEMPTS = 5  # tries of one write while it answers 503 (or its solution is refused)
MAX_RETRY_WAIT_S = 2.0
READ_THINK_S = (1.0, 3.0)  # looking at the product page
CART_THINK_S = (1.0, 3.0)  # from a unit in the cart to "checkout"
PAY_THINK_S = (1.0, 2.0)  # typing the card details
LATE_CLICK_SHARE = 0.3  # shoppers who click "add to cart" on a sold-out product anyway
BOT_POLL_S = 0.1  # bots poll their ticket this often (a page: 0.5 to 5 s)
ADMISSION_TIMEOUT_S = 120.0
ID_LETTERS = 12
OUTCOME = "OUTCOME"
ANSWER = "ANSWER"
ALTCHA, ADMISSION = "X-Altcha", "X-Admission"

# The answers with which a defence turns a client away (status, problem type).
DEFENCE_REFUSALS = frozenset({
    (429, "rate-limited"), (403, "blocked"), (403, "admission-required"),
    (403, "challenge-required"), (403, "challenge-invalid"), (403, "challenge-replayed"),
    (403, "admission-not-yours"),
    (403, "ticket-invalid"), (410, "admission-expired"),
})  # fmt: skip
# Answers that are a normal part of a sale for a shopper (not failures).
EXPECTED = frozenset({
    (409, "sold-out"), (409, "limit-reached"), (409, "not-open"), (409, "sale-closed"),
    (410, "hold-expired"), (402, "payment-declined"),
})  # fmt: skip

# Solutions shoppers of this process have spent: what the replay bots replay.
SPENT: list[str] = []
_addresses = itertools.count()


def _letters() -> str:
    # Letters only: digits could form a Luhn-valid run the gateway refuses as a card.
    return "".join(random.choices(string.ascii_lowercase, k=ID_LETTERS))


def _slug(doc: Mapping[str, Any]) -> str:
    return str(doc.get("type", "")).rsplit("/", 1)[-1]


def _doc(resp: Any) -> dict[str, Any]:
    try:
        value = resp.json()
    except (ValueError, TypeError):
        return {"raw": str(resp.text or "")[:200]}
    return value if isinstance(value, dict) else {"value": value}


def _retry_after(value: str | None) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(value or 1)))
    except ValueError:
        return 1.0


def _think(bounds: tuple[float, float]) -> None:
    # locust patches time.sleep with gevent's: this parks the user, not the process.
    time.sleep(random.uniform(*bounds))


def _until(when_s: float) -> None:
    wait = when_s - time.time()
    if wait > 0:
        time.sleep(wait)


class _Client(HttpUser):
    """Plumbing: a source address, a class tag on every answer, tokens."""

    abstract = True
    kind = "client"
    user_agent: str | None = BROWSER_UA  # None: python-requests' own

    def bind(self, address: str) -> None:
        """Send every later request from ``address`` (a new connection pool)."""
        self.address = address
        old = self.client.adapters.get("http://")
        pool = PoolManager(num_pools=2, maxsize=4, source_address=(address, 0))
        self.client.mount("http://", LocustHttpAdapter(pool_manager=pool))
        if old is not None:
            old.close()  # the previous person's connections
        if self.user_agent is not None:
            self.client.headers["User-Agent"] = self.user_agent

    def account(self, user_id: str) -> None:
        self.user_id = user_id
        self.token = issue_token(SECRET, user_id, TOKEN_TTL_S)

    def _event(self, kind: str, name: str) -> None:
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=0, response_length=0,
            exception=None, context={},
        )  # fmt: skip

    def outcome(self, name: str) -> None:
        self._event(OUTCOME, f"{self.kind}: {name}")

    def call(
        self,
        method: str,
        path: str,
        name: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One request; its answer counted under this user's class. Which answers are
        failures: see ``judge``."""
        sent = {"Authorization": f"Bearer {self.token}"} if getattr(self, "token", "") else {}
        sent.update(headers or {})
        with self.client.request(
            method, path, json=body, headers=sent, name=f"{self.kind} {method} {name}",
            catch_response=True,
        ) as resp:  # fmt: skip
            status, doc = resp.status_code, _doc(resp)
            slug = _slug(doc)
            self._event(ANSWER, f"{self.kind} {method} {name} -> {status} {slug}".rstrip())
            problem = self.judge(status, slug)
            if problem:
                resp.failure(problem)
            else:
                resp.success()
            return status, doc

    def judge(self, status: int, slug: str) -> str:
        """'' when the answer is as it should be for this class, else why not."""
        if 200 <= status < 300 or (status, slug) in EXPECTED or status == 503:
            return ""
        return f"{status} {slug or 'no problem type'}"

    def challenge(self) -> Solution | None:
        status, body = self.call("GET", "/challenge", "/challenge")
        return solution(body) if status == 200 else None

    def queue(self, poll: float | None) -> str | None:
        """Take a ticket for the current account (its bearer token: places are personal)
        and poll it until admitted (``poll`` s apart, or as the shop page does when
        None): the admission token."""
        status, place = self.call("POST", "/queue", "/queue")
        if status not in (200, 201):
            return None
        deadline = time.monotonic() + ADMISSION_TIMEOUT_S
        while not place.get("admitted"):
            if time.monotonic() > deadline:
                self.outcome("never admitted")
                return None
            time.sleep(poll if poll is not None else poll_after_s(place))
            status, place = self.call("GET", f"/queue/{place['ticket']}", "/queue/{ticket}")
            if status != 200:
                return None
        admission = place.get("admission")
        return str(admission) if admission else None


class Shopper(_Client):
    """A person: page, stock, queue, proof of work, add to cart, checkout, pay."""

    kind = "shopper"
    weight = 1
    wait_time = between(1.0, 5.0)  # before the next person arrives on this locust user

    def judge(self, status: int, slug: str) -> str:
        if (status, slug) in DEFENCE_REFUSALS:
            return f"a shopper refused by a defence: {status} {slug}"
        return super().judge(status, slug)

    @task
    def journey(self) -> None:
        self.bind(shopper_address(next(_addresses)))
        self.account("shopper-" + _letters())
        if self.call("GET", f"/products/{PRODUCT}", "/products/{id}")[0] != 200:
            return
        self.call("GET", f"/inventory/{PRODUCT}", "/inventory/{id}")
        _think(READ_THINK_S)
        admission = self.queue(None)
        if admission is None:
            self.outcome("no admission")
            return
        status, stock = self.call("GET", f"/inventory/{PRODUCT}", "/inventory/{id}")
        if stock.get("available_quantity") == 0 and random.random() >= LATE_CLICK_SHARE:
            self.outcome("left: saw sold out")
            return
        status, hold = self.hold(admission)
        if status != 200:
            self.outcome(f"add-to-cart {status} {_slug(hold)}")
            return
        _think(CART_THINK_S)
        order_body = {"user_id": self.user_id, "cart_id": hold["cart_id"],
                      "payment_method": PAYMENT_METHOD, "shipping_address": ADDRESS}  # fmt: skip
        status, order = self.write("/checkout", order_body, admission)
        if status != 200:
            self.outcome(f"checkout {status} {_slug(order)}")
            return
        _think(PAY_THINK_S)
        pay_body = {"order_id": order["order_id"], "payment_method": PAYMENT_METHOD,
                    "amount": order["amount"]}  # fmt: skip
        status, paid = self.write("/payment", pay_body, admission)
        self.outcome("purchased" if status == 200 else f"payment {status} {_slug(paid)}")

    def hold(self, admission: str) -> tuple[int, dict[str, Any]]:
        """Add one unit, as the page does: a fresh solution per try, used no sooner than
        its use_after; one Idempotency-Key for every try."""
        key = uuid.uuid4().hex
        body = {"user_id": self.user_id, "product_id": PRODUCT, "quantity": 1}
        status, doc = 0, dict[str, Any]()
        for _ in range(MAX_ATTEMPTS):
            solved = self.challenge()
            if solved is None:
                return 0, {}
            _until(solved.use_after_s)
            headers = {ADMISSION: admission, ALTCHA: solved.payload, "Idempotency-Key": key}
            status, doc = self.call("POST", "/add-to-cart", "/add-to-cart", body=body,
                                    headers=headers)  # fmt: skip
            if len(SPENT) < 8:
                SPENT.append(solved.payload)
            if status == 503:
                time.sleep(_retry_after(None) * random.uniform(0.5, 1.0))
                continue
            if (status, _slug(doc)) in {(403, "challenge-invalid"), (403, "challenge-replayed")}:
                continue
            break
        return status, doc

    def write(self, path: str, body: Mapping[str, Any], admission: str) -> tuple[int, Any]:
        """A write retried through 503 with one Idempotency-Key."""
        headers = {ADMISSION: admission, "Idempotency-Key": uuid.uuid4().hex}
        status, doc = 0, dict[str, Any]()
        for _ in range(MAX_ATTEMPTS):
            status, doc = self.call("POST", path, path, body=body, headers=headers)
            if status != 503:
                break
            time.sleep(MAX_RETRY_WAIT_S * random.uniform(0.25, 0.5))
        return status, doc


class _Bot(_Client):
    """A bot: starts at the opening second, never thinks, every refusal expected."""

    abstract = True
    number = 0

    def judge(self, status: int, slug: str) -> str:
        if (status, slug) in DEFENCE_REFUSALS:
            return ""
        return super().judge(status, slug)

    def on_start(self) -> None:
        type(self).number += 1
        self.n = type(self).number
        self.accounts = itertools.count(1)
        self.token = ""
        self.bind(self.address_of(self.n))
        _until(OPENS_AT_S)

    def address_of(self, n: int) -> str:
        """The source address of this kind's n-th bot: every subclass says (one shared
        address for a swarm or a farm, one each for scripted clients)."""
        raise NotImplementedError(f"{type(self).__name__} must say where its bots come from")

    def new_account(self) -> None:
        self.account(f"{self.kind}-{self.n}-{next(self.accounts)}")

    def add_to_cart(self, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        body = {"user_id": self.user_id, "product_id": PRODUCT, "quantity": 1}
        headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        return self.call("POST", "/add-to-cart", "/add-to-cart", body=body, headers=headers)

    def buy(self, hold: Mapping[str, Any], admission: str) -> None:
        """Check out and pay at once (what a bot does with a unit it got)."""
        self.outcome("got a hold")
        order_body = {"user_id": self.user_id, "cart_id": hold["cart_id"],
                      "payment_method": PAYMENT_METHOD, "shipping_address": ADDRESS}  # fmt: skip
        headers = {ADMISSION: admission, "Idempotency-Key": uuid.uuid4().hex}
        status, order = self.call("POST", "/checkout", "/checkout", body=order_body,
                                  headers=headers)  # fmt: skip
        if status != 200:
            return
        pay_body = {"order_id": order["order_id"], "payment_method": PAYMENT_METHOD,
                    "amount": order["amount"]}  # fmt: skip
        headers = {ADMISSION: admission, "Idempotency-Key": uuid.uuid4().hex}
        status, _ = self.call("POST", "/payment", "/payment", body=pay_body, headers=headers)
        if status == 200:
            self.outcome("purchased")


class SwarmBot(_Bot):
    """Many clients, one address, add-to-cart without admission or proof of work."""

    kind = "bot-swarm"
    fixed_count = SWARM
    wait_time = constant(0.05)

    def address_of(self, n: int) -> str:
        return "127.66.1.1"

    def on_start(self) -> None:
        super().on_start()
        self.new_account()

    @task
    def hammer(self) -> None:
        self.add_to_cart({})


class ScriptedBot(_Bot):
    """python-requests, solves every challenge, writes at once, skips the queue."""

    kind = "bot-script"
    fixed_count = SCRIPTED
    user_agent = None
    wait_time = constant(0.2)

    def address_of(self, n: int) -> str:
        return f"127.66.2.{n}"

    def on_start(self) -> None:
        super().on_start()
        self.new_account()

    @task
    def grab(self) -> None:
        solved = self.challenge()
        if solved is not None:
            self.add_to_cart({ALTCHA: solved.payload})


class ReplayBot(_Bot):
    """A new account per try, each queued like everybody, replaying a spent solution."""

    kind = "bot-replay"
    fixed_count = REPLAY
    wait_time = constant(0.2)

    def address_of(self, n: int) -> str:
        return f"127.66.3.{n}"

    @task
    def replay(self) -> None:
        if not SPENT:
            time.sleep(0.5)
            return
        self.new_account()
        admission = self.queue(BOT_POLL_S)
        if admission is None:
            return
        status, hold = self.add_to_cart({ADMISSION: admission, ALTCHA: SPENT[0]})
        if status == 200:
            self.buy(hold, admission)


class FarmBot(_Bot):
    """One address, a new account per hold, each queued for its own admission, no pause
    after solving."""

    kind = "bot-farm"
    fixed_count = FARM
    wait_time = constant(0.1)

    def address_of(self, n: int) -> str:
        return "127.66.4.1"

    @task
    def grab(self) -> None:
        self.new_account()
        admission = self.queue(BOT_POLL_S)
        if admission is None:
            return
        solved = self.challenge()
        if solved is None:
            return
        status, hold = self.add_to_cart({ADMISSION: admission, ALTCHA: solved.payload})
        if status == 200:
            self.buy(hold, admission)
