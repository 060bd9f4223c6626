"""Where the writer reads committed events: any node's ``GET /v1/feed``.

Theory of operation: ``NodeFeed`` long-polls one node of the config and stays with it
while it answers; a node that fails (refused, timed out, 5xx) is left for the next one
in config order, so the writer follows the feed through the loss of any minority of
nodes. Every node serves the same events for the same index (the ledger is
deterministic), so switching nodes never changes what is applied; a node that lags
simply long-polls until it has newer events. A refused token (wrong cluster secret)
is not retried: ``FeedUnauthorized``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from cluster.client import ClusterClient
from cluster.config import ClusterConfig
from cluster.errors import ClusterError, Unauthorized
from snapshots.store import FeedPage

log = logging.getLogger("snapshots.feed")

FEED_TIMEOUT_MARGIN_S = 5.0  # beyond the long-poll wait, before a request counts as lost


class FeedUnavailable(RuntimeError):
    """No node answered a feed request."""


class FeedUnauthorized(RuntimeError):
    """A node refused the internal token: this config's secret is not the cluster's."""


class FeedSource(Protocol):
    async def fetch(self, from_index: int, limit: int, wait_ms: int) -> FeedPage:
        """Events with an index above ``from_index`` (or a snapshot and the events after
        it), waiting up to ``wait_ms`` when there are none yet."""
        ...

    async def close(self) -> None: ...


def page_of(body: Mapping[str, Any]) -> FeedPage:
    """The page of a feed answer (ValueError when it is not one)."""
    events, last_index, snapshot = body.get("events"), body.get("last_index"), body.get("snapshot")
    if not isinstance(events, list) or type(last_index) is not int:
        raise ValueError("a feed answer has events (a list) and last_index (an integer)")
    if snapshot is not None and not isinstance(snapshot, dict):
        raise ValueError("a feed answer's snapshot is null or an object")
    return FeedPage(events=events, last_index=last_index, snapshot=snapshot)


class NodeFeed:
    """The feed of the config's nodes, one at a time."""

    def __init__(self, config: ClusterConfig, client: ClusterClient | None = None) -> None:
        self._config = config
        self._client = client or ClusterClient(config)
        self._own_client = client is None
        self._current = 0  # index into config.nodes

    @property
    def node_id(self) -> str:
        return self._config.nodes[self._current].id

    async def fetch(self, from_index: int, limit: int, wait_ms: int) -> FeedPage:
        problems: list[str] = []
        nodes = self._config.nodes
        for _ in range(len(nodes)):
            node = nodes[self._current]
            try:
                body = await self._client.get(
                    "/v1/feed",
                    node_id=node.id,
                    params={"from": from_index, "limit": limit, "wait_ms": wait_ms},
                    timeout_s=wait_ms / 1000 + FEED_TIMEOUT_MARGIN_S,
                )
                return page_of(body)
            except Unauthorized as exc:
                raise FeedUnauthorized(str(exc)) from None
            except (ClusterError, ValueError) as exc:
                problems.append(f"{node.id}: {exc}")
                self._current = (self._current + 1) % len(nodes)
                log.warning(
                    "feed request failed, trying the next node",
                    extra={"node": node.id, "error": str(exc)[:300]},
                )
        raise FeedUnavailable("no node served the feed: " + "; ".join(problems))

    async def close(self) -> None:
        if self._own_client:
            await self._client.close()


RETRY_FIRST_S = 0.1  # first pause after a failed step
RETRY_MAX_S = 5.0  # pauses double up to this


class FailureCounter(Protocol):
    def labels(self, reason: str) -> Any: ...


async def follow(
    step: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    failures: FailureCounter,
    on_failure: Callable[[Exception], Awaitable[None]],
    logger: logging.Logger,
) -> None:
    """Run ``step`` (apply one feed page) again and again until ``stop`` is set.

    A step in progress when ``stop`` is set is cancelled: a long-poll is dropped, and an
    apply running in a worker thread still commits or rolls back whole. After a failed
    step the loop pauses (doubling from RETRY_FIRST_S to RETRY_MAX_S, cut short by
    ``stop``) and tries again. Feed failures are counted and logged here; any other
    exception goes to ``on_failure``, which recovers (and returns) or raises to end the
    loop. The feed's consumers (snapshot writer, notifier) share this loop.
    """
    pause_s = RETRY_FIRST_S
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            current = asyncio.ensure_future(step())
            await asyncio.wait({current, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not current.done():
                current.cancel()
                await asyncio.gather(current, return_exceptions=True)
                break
            try:
                current.result()
                pause_s = RETRY_FIRST_S
                continue
            except FeedUnauthorized:
                failures.labels("unauthorized").inc()
                logger.error("the nodes refuse this config's internal token (cluster.secret)")
            except FeedUnavailable as exc:
                failures.labels("feed").inc()
                logger.warning("feed unavailable", extra={"error": str(exc)[:500]})
            except Exception as exc:
                await on_failure(exc)
            pause = asyncio.ensure_future(asyncio.sleep(pause_s))
            await asyncio.wait({pause, stopping}, return_when=asyncio.FIRST_COMPLETED)
            pause.cancel()
            pause_s = min(pause_s * 2, RETRY_MAX_S)
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
