"""The chaos workload: many concurrent shoppers buying scarce stock through the gateways.

Theory of operation: each shopper is one asyncio task with its own seeded random
generator (``seed``, shopper number), so the choices of a run (which product, how many,
release, abandon or check out, how to pay) are the same for the same seed; only timing
differs between runs. A shopper reserves (``POST /add-to-cart``), sometimes releases a
hold (``DELETE /cart/{cart}/items/{hold}``), sometimes abandons its cart to let the holds
expire, and checks out (``POST /checkout``); an order is then paid, declined and paid,
failed, or left unpaid until its payment deadline. The gateway has no ``/payment`` yet,
so payment outcomes are recorded the way the payment step records them, as
``record_payment`` commands through the node internal API (``ClusterClient``). An
``admin`` task restocks (and now and then withdraws) units on a seeded rhythm, so the sale
sells out, comes back and sells out again.

Every operation goes into the history (``chaos.history``): invoked once, completed once.
An attempt that ends without a definite answer (a timeout, a reset connection, a 5xx) is
retried with the SAME Idempotency-Key, on the other gateway when this one does not
answer, until the operation's deadline; the operation is then ``unknown`` if any attempt
may have reached the ledger, else ``fail``. A 2xx is ``ok``, a 4xx refusal ``fail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from chaos.history import Completion, History
from cluster.client import ClusterClient
from cluster.config import ClusterConfig
from cluster.errors import ClusterError, CommitUnknown, NoLeader
from gateway.idempotency import HEADER, ledger_key
from gateway.identity import issue_token

log = logging.getLogger("chaos.workload")

ATTEMPT_TIMEOUT_S = 15.0  # one HTTP attempt (the gateway answers within its 10 s deadline)
OP_DEADLINE_S = 30.0  # an operation is retried until this, then given up as unknown/fail
MAX_ATTEMPTS = 12  # ... or until this many attempts
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 1.5
RETRY_AFTER_MAX_S = 1.0
TOKEN_TTL_S = 24 * 3600
NOT_APPLIED = {"no-leader", "overloaded"}  # the gateway refused before proposing anything
SHIPPING = {"address_line1": "1 Chaos Street", "city": "Lisbon", "postal_code": "1000-001",
            "country": "PT"}


@dataclass(frozen=True, slots=True)
class ProductPlan:
    product_id: str
    name: str
    price_minor: int
    stock: int
    per_user_limit: int
    hold_ttl_ms: int

    def create_command(self, key: str) -> dict[str, Any]:
        return {
            "type": "create_product",
            "key": key,
            "product_id": self.product_id,
            "name": self.name,
            "price_minor": self.price_minor,
            "total_stock": self.stock,
            "per_user_limit": self.per_user_limit,
            "hold_ttl_ms": self.hold_ttl_ms,
        }


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    shoppers: int = 30
    products: tuple[ProductPlan, ...] = (
        ProductPlan("lamp", "Chaos Lamp", 1999, 30, 3, 3000),
        ProductPlan("kettle", "Chaos Kettle", 4999, 40, 2, 3000),
    )
    think_ms: tuple[int, int] = (100, 600)  # pause between a shopper's operations
    sold_out_think_ms: tuple[int, int] = (500, 2000)  # after a sold-out: wait, refresh
    restock_every_s: tuple[float, float] = (2.0, 4.0)
    restock_units: tuple[int, int] = (5, 20)
    limit_refusals_to_leave: int = 3  # then this shopper leaves and a new one comes
    p_release: float = 0.10
    p_abandon: float = 0.08
    p_checkout: float = 0.45  # else reserve again (the cart grows)
    payments: tuple[tuple[str, int], ...] = (
        ("paid", 70),
        ("declined", 12),  # then paid with a new attempt
        ("failed", 6),
        ("unpaid", 12),  # left to expire at the payment deadline
    )


@dataclass(slots=True)
class _Answer:
    status: int
    body: dict[str, Any]
    retry_after_s: float


@dataclass(slots=True)
class Stats:
    by_outcome: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1


class Workload:
    """The shoppers and the admin of one run; see the module docstring."""

    def __init__(
        self,
        config: ClusterConfig,
        plan: WorkloadPlan,
        seed: int,
        history: History,
        session: aiohttp.ClientSession,
        client: ClusterClient,
        *,
        tag: str = "",
    ) -> None:
        self.config = config
        # Put into every user id and admin key: a run against a cluster that already saw
        # one with this seed gets shoppers and keys of its own.
        self.tag = tag
        self.plan = plan
        self.seed = seed
        self.history = history
        self.session = session
        self.client = client
        self.gateways = [g.listen.url for g in config.gateways]
        self.stats = Stats()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Shoppers finish the operation they are in, then leave."""
        self._stopping.set()

    async def run(self, duration_s: float) -> None:
        """Shop for ``duration_s`` seconds, then let every operation in flight finish."""
        tasks = [
            asyncio.create_task(self._shopper(i), name=f"shopper-{i}")
            for i in range(self.plan.shoppers)
        ]
        tasks.append(asyncio.create_task(self._admin(), name="admin"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), duration_s)
        self._stopping.set()
        await asyncio.gather(*tasks)

    # -- shoppers ----------------------------------------------------------------------

    async def _pause(self, rng: random.Random, lo_ms: int, hi_ms: int) -> bool:
        """Sleep; False once the run is stopping (the shopper then leaves)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), rng.uniform(lo_ms, hi_ms) / 1000)
        except TimeoutError:
            return True
        return False

    async def _shopper(self, number: int) -> None:
        """One seat of the crowd: a shopper who leaves after buying (or after hitting the
        per-shopper limit) is followed by a new one with a new user id."""
        rng = random.Random(f"shopper:{self.seed}:{number}")
        s = _Shopper(self, number, rng)
        plan = self.plan
        think_ms = plan.think_ms
        while await self._pause(rng, *think_ms):
            think_ms = plan.think_ms
            r = rng.random()
            if not s.holds or r < 1 - (plan.p_release + plan.p_abandon + plan.p_checkout):
                product = rng.choice(plan.products)
                refusal = await s.reserve(product.product_id, 1 if rng.random() < 0.8 else 2)
                if refusal == "sold-out":
                    think_ms = plan.sold_out_think_ms
                elif refusal == "limit-reached":
                    s.limit_refusals += 1
                    if s.limit_refusals >= plan.limit_refusals_to_leave:
                        s.next_shopper()
            elif r < 1 - (plan.p_abandon + plan.p_checkout):
                await s.release(s.holds.pop(rng.randrange(len(s.holds))))
            elif r < 1 - plan.p_checkout:
                s.holds.clear()  # walk away: the holds expire on their own
                longest_ms = max(p.hold_ttl_ms for p in plan.products)
                if not await self._pause(rng, longest_ms, longest_ms + 1000):
                    return
            else:
                order = await s.checkout()
                if order is not None:
                    await s.pay(order, rng.choices(*zip(*plan.payments, strict=True))[0])
                    if rng.random() < 0.5:
                        s.next_shopper()

    # -- admin -------------------------------------------------------------------------

    async def _admin(self) -> None:
        rng = random.Random(f"admin:{self.seed}")
        n = 0
        while await self._pause(rng, *(int(s * 1000) for s in self.plan.restock_every_s)):
            product = rng.choice(self.plan.products)
            more = rng.randint(*self.plan.restock_units)
            quantity = more if rng.random() < 0.85 else -rng.randint(1, 3)
            n += 1
            command = {
                "type": "restock",
                "key": f"restock-{self.tag}{self.seed}-{n}",
                "product_id": product.product_id,
                "quantity": quantity,
            }
            await self.internal("admin", "restock", command)

    async def internal(self, process: str, op: str, command: dict[str, Any]) -> Completion:
        """One command through the node internal API, recorded in the history."""
        request = {k: v for k, v in command.items() if k not in ("type", "key")}
        op_id = self.history.invoke(process, op, request, key=command["key"],
                                    ledger_key=command["key"])
        outcome: Completion
        status: int | None = None
        result: dict[str, Any] | None = None
        error: str | None = None
        ambiguous = False
        try:
            answer = await self.client.submit([command], deadline_s=OP_DEADLINE_S)
        except CommitUnknown as exc:
            outcome, error, ambiguous = "unknown", str(exc), True
        except NoLeader as exc:
            outcome, error, status = "fail", str(exc), 503
            result = {"type": "no-leader"}
        except ClusterError as exc:
            outcome, error, ambiguous = "unknown", f"{type(exc).__name__}: {exc}", True
        else:
            result = dict(answer.results[0], ledger_index=answer.index)
            outcome = "ok" if result.get("ok") else "fail"
            status = 200
        self.history.complete(op_id, outcome, process, op, key=command["key"], result=result,
                              status=status, ambiguous=ambiguous, error=error)
        self.stats.count(outcome)
        return outcome

    # -- HTTP through the gateways -----------------------------------------------------

    async def _attempt(
        self, gateway: str, method: str, path: str, token: str, key: str,
        body: Mapping[str, Any] | None,
    ) -> _Answer:
        headers = {"Authorization": f"Bearer {token}", HEADER: key}
        async with self.session.request(
            method,
            gateway + path,
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S),
        ) as resp:
            raw = await resp.read()
            try:
                value = json.loads(raw)
            except ValueError:
                value = {"raw": raw[:300].decode("utf-8", "replace")}
            retry_after = resp.headers.get("Retry-After", "")
            return _Answer(
                resp.status,
                value if isinstance(value, dict) else {"value": value},
                min(RETRY_AFTER_MAX_S, float(retry_after)) if retry_after.isdigit() else 0.0,
            )

    async def gateway_op(
        self,
        shopper: _Shopper,
        op: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        request: Mapping[str, Any],
    ) -> tuple[Completion, dict[str, Any]]:
        """One shopper operation, retried with the same key; recorded in the history."""
        key = shopper.next_key()
        lk = ledger_key(shopper.user, key)
        op_id = self.history.invoke(shopper.process, op, request, key=key, ledger_key=lk)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OP_DEADLINE_S
        backoff_s = BACKOFF_FIRST_S
        attempts = 0
        ambiguous = False
        last_error = ""
        last: _Answer | None = None
        outcome: Completion | None = None
        while outcome is None:
            attempts += 1
            gateway = self.gateways[shopper.gateway % len(self.gateways)]
            wait_s = 0.0
            try:
                answer = await self._attempt(gateway, method, path, shopper.token, key, body)
            except aiohttp.ClientConnectorError as exc:
                last_error = f"{gateway}: {exc}"  # never connected: nothing was sent
                shopper.gateway += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                last_error = f"{gateway}: {type(exc).__name__} {exc}".strip()
                ambiguous = True
                shopper.gateway += 1
            else:
                last = answer
                if 200 <= answer.status < 300:
                    outcome = "ok"
                elif 400 <= answer.status < 500 and answer.status not in (408, 429):
                    outcome = "fail"
                else:
                    slug = str(answer.body.get("type", "")).rsplit("/", 1)[-1]
                    if slug not in NOT_APPLIED:
                        ambiguous = True
                    last_error = f"{gateway}: HTTP {answer.status} {slug}"
                    wait_s = answer.retry_after_s
            if outcome is None and (loop.time() + backoff_s > deadline or attempts >= MAX_ATTEMPTS):
                outcome = "unknown" if ambiguous else "fail"
            elif outcome is None:
                await asyncio.sleep(max(wait_s, backoff_s * shopper.rng.uniform(0.5, 1.0)))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        result = last.body if last is not None else None
        if outcome == "unknown":
            result = None
        self.history.complete(
            op_id, outcome, shopper.process, op, key=key,
            result=result, status=last.status if last is not None else None,
            attempts=attempts, ambiguous=ambiguous,
            error=None if outcome == "ok" else last_error or None,
        )
        self.stats.count(outcome)
        return outcome, (last.body if last is not None else {})


@dataclass(slots=True)
class _Hold:
    hold_id: str
    cart_id: str


class _Shopper:
    """One seat of the crowd: the current shopper's token, keys, cart and holds."""

    def __init__(self, work: Workload, number: int, rng: random.Random) -> None:
        self.work = work
        self.number = number
        self.process = f"shopper-{number}"
        self.rng = rng
        self.gateway = number  # spread shoppers over the gateways
        self.generation = -1
        self.next_shopper()

    def next_shopper(self) -> None:
        """This shopper leaves; a new one (a new user id) takes the seat."""
        self.generation += 1
        self.user = f"u{self.work.tag}{self.number:03d}-{self.generation}"
        self.token = issue_token(self.work.config.secret, self.user, TOKEN_TTL_S)
        self.holds: list[_Hold] = []
        self.cart_id: str | None = None
        self.limit_refusals = 0
        self._keys = 0
        self._payments = 0

    def next_key(self) -> str:
        self._keys += 1
        return f"s{self.work.seed}-{self.user}-{self._keys}"

    async def reserve(self, product_id: str, quantity: int) -> str:
        """Add to the cart; the problem slug of a refusal ("" when held or unknown)."""
        body = {"user_id": self.user, "product_id": product_id, "quantity": quantity}
        outcome, result = await self.work.gateway_op(
            self, "reserve", "POST", "/add-to-cart", body, body
        )
        if outcome == "ok":
            self.cart_id = str(result["cart_id"])
            self.holds.append(_Hold(str(result["hold_id"]), self.cart_id))
        if outcome == "fail":
            return str(result.get("type", "")).rsplit("/", 1)[-1]
        return ""

    async def release(self, hold: _Hold) -> None:
        request = {"user_id": self.user, "cart_id": hold.cart_id, "hold_id": hold.hold_id}
        await self.work.gateway_op(
            self, "release", "DELETE", f"/cart/{hold.cart_id}/items/{hold.hold_id}", None,
            request,
        )

    async def checkout(self) -> dict[str, Any] | None:
        if self.cart_id is None:
            return None
        body = {
            "user_id": self.user,
            "cart_id": self.cart_id,
            "payment_method": "pm_chaos",
            "shipping_address": SHIPPING,
        }
        request = {"user_id": self.user, "cart_id": self.cart_id}
        outcome, result = await self.work.gateway_op(
            self, "checkout", "POST", "/checkout", body, request
        )
        self.holds.clear()
        if outcome != "fail" or result.get("type", "").endswith("/already-exists"):
            self.cart_id = None  # ordered (or maybe): the next reserve opens a new cart
        return result if outcome == "ok" else None

    async def pay(self, order: Mapping[str, Any], plan: str) -> None:
        if plan == "unpaid":
            return
        outcomes: Sequence[str] = ("declined", "paid") if plan == "declined" else (plan,)
        for outcome in outcomes:
            self._payments += 1
            command = {
                "type": "record_payment",
                "key": f"pay-{self.work.seed}-{self.user}-{self._payments}",
                "order_id": order["order_id"],
                "outcome": outcome,
                "amount_minor": order["amount_minor"],
                "provider": "chaos-pay",
                "transaction_id": f"tx-{self.user}-{self._payments}",
            }
            if await self.work.internal(self.process, "pay", command) != "ok":
                return
