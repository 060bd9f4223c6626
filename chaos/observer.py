"""What the checker needs from the cluster: the whole feed, and the state at the end.

Theory of operation: a node keeps only the events since its last dump once it restarts,
and a full restart restarts every node, so the feed from index 0 cannot be read at the
end of a run. ``FeedRecorder`` therefore follows the feed during the whole run, from
index 0, long-polling whichever node answers and moving to the next one when a node does
not. A node that restarted may only offer a snapshot for an old index; the recorder then
asks the other nodes, and takes the snapshot only when every node offers nothing else (it
is written into the feed as a ``{"reset": snapshot}`` entry, and the checker reports the
gap). Every event is also appended to ``feed.jsonl`` as it arrives.

``node_states`` reads, once the cluster has recovered, what every node says (ledger
index, digest, products) and ``lookup`` finds every acknowledged hold and order.
``read_store`` reads the order-snapshot store (``storage.url``) the run's snapshot
writer fills, and ``wait_store`` waits until its applied index reaches the ledger's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import aiohttp

from cluster.auth import internal_token
from cluster.client import ClusterClient
from cluster.config import ClusterConfig
from cluster.errors import ClusterError, NotFound
from node.feed import MAX_FEED_PAGE_EVENTS
from snapshots.database import DatabaseError, open_database

log = logging.getLogger("chaos.observer")

FEED_WAIT_MS = 1_000  # long-poll of one feed request (short: a stop is noticed soon)
FEED_TIMEOUT_S = 6.0
RETRY_S = 0.2
SNAPSHOT_REFUSALS_PER_NODE = 3  # snapshots declined per node before one is accepted
LOOKUP_CONCURRENCY = 16  # final lookups of holds and orders in flight
STORE_POLL_S = 0.25
# The tables the checker reads, and the columns it needs of each.
STORE_COLUMNS = {
    "orders": ("order_id", "cart_id", "user_id", "order_status", "payment_status"),
    "cart": ("hold_id", "cart_id", "status", "order_id"),
    "inventory": (
        "product_id", "available_quantity", "reserved_quantity", "sold_quantity", "total_stock",
    ),
    "stock_moves": ("ledger_index", "seq", "product_id", "from_bucket", "to_bucket", "quantity"),
}


class FeedRecorder:
    """Follows the committed-event feed for a whole run; see the module docstring."""

    def __init__(self, config: ClusterConfig, session: aiohttp.ClientSession, path: Path) -> None:
        self.config = config
        self.session = session
        self.entries: list[dict[str, Any]] = []
        self.last_index = 0
        self.gaps = 0
        self._headers = {"Authorization": f"Bearer {internal_token(config.secret)}"}
        self._file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 (run() closes)
        self._stop = asyncio.Event()
        self._advanced = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _write(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    async def _page(self, api_url: str) -> dict[str, Any]:
        params = {"from": self.last_index, "limit": MAX_FEED_PAGE_EVENTS, "wait_ms": FEED_WAIT_MS}
        async with self.session.get(
            api_url + "/v1/feed",
            params=params,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=FEED_TIMEOUT_S),
        ) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message="feed refused"
                )
            value = await resp.json()
            if not isinstance(value, dict):
                raise ValueError("feed page is not a JSON object")
            return value

    async def run(self) -> None:
        """Follow the feed until ``stop``."""
        nodes = self.config.nodes
        current = 0
        refusals = 0
        try:
            while not self._stop.is_set():
                node = nodes[current % len(nodes)]
                try:
                    page = await self._page(node.api.url)
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    current += 1
                    await asyncio.sleep(RETRY_S)
                    continue
                if page.get("snapshot") is not None:
                    refusals += 1
                    if refusals < SNAPSHOT_REFUSALS_PER_NODE * len(nodes):
                        current += 1  # another node may still have the events
                        await asyncio.sleep(RETRY_S)
                        continue
                    self.gaps += 1
                    log.warning("feed gap", extra={"from": self.last_index, "node": node.id})
                    self._write({"reset": page["snapshot"]})
                refusals = 0
                for event in page.get("events") or ():
                    self._write(event)
                last = page.get("last_index")
                if isinstance(last, int) and last > self.last_index:
                    self.last_index = last
                    self._advanced.set()
                self._file.flush()
        finally:
            self._file.close()

    async def wait_for(self, index: int, timeout_s: float) -> bool:
        """Wait until the recorder has every event up to ``index``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.last_index < index:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                return False
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), min(remaining_s, 1.0))
        return True


async def _node_state(client: ClusterClient, node_id: str) -> dict[str, Any] | None:
    try:
        status = await client.get("/v1/status", node_id=node_id, params={"digest": "1"})
        products = await client.get("/v1/products", node_id=node_id)
    except ClusterError:
        return None
    return {
        "ledger_index": status.get("ledger_index"),
        "digest": status.get("digest"),
        "role": status.get("role"),
        "term": status.get("term"),
        "products_index": products.get("index"),
        "products": products.get("products", []),
    }


async def node_states(client: ClusterClient) -> dict[str, dict[str, Any] | None]:
    """Every node's ledger index, digest and products (None for a node that is silent)."""
    ids = [n.id for n in client.config.nodes]
    found = await asyncio.gather(*(_node_state(client, n) for n in ids))
    return dict(zip(ids, found, strict=True))


async def lookup(
    client: ClusterClient, kind: str, ids: Iterable[str]
) -> dict[str, dict[str, Any] | None]:
    """``/v1/{kind}s/{id}`` for each id (from the leader): the view, or None if unknown."""
    semaphore = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def one(ident: str) -> tuple[str, dict[str, Any] | None]:
        async with semaphore:
            try:
                answer = await client.get(f"/v1/{kind}s/{ident}")
            except NotFound:
                return ident, None
            value = answer.get(kind)
            return ident, value if isinstance(value, dict) else None

    pairs = await asyncio.gather(*(one(i) for i in sorted(set(ids))))
    return dict(pairs)


def read_store(url: str) -> dict[str, Any]:
    """The rows of the snapshot store at ``url`` the checker judges, read in one
    transaction (one consistent picture): ``applied_index``, ``rebuilt_from_index`` and
    per table a list of rows as dicts."""
    db = open_database(url, durable=False)
    try:
        with db.transaction() as tx:
            head = tx.query("SELECT ledger_index, rebuilt_from_index FROM applied_index")
            out: dict[str, Any] = {
                "applied_index": int(head[0][0]) if head else -1,
                "rebuilt_from_index": int(head[0][1]) if head else 0,
            }
            for table, columns in STORE_COLUMNS.items():
                rows = tx.query(f"SELECT {', '.join(columns)} FROM {table}")
                out[table] = [dict(zip(columns, row, strict=True)) for row in rows]
        return out
    finally:
        db.close()


def _store_index(url: str) -> int:
    db = open_database(url, durable=False)
    try:
        rows = db.query("SELECT ledger_index FROM applied_index WHERE id = 1")
        return int(rows[0][0]) if rows else -1
    finally:
        db.close()


async def wait_store(url: str, index: int, timeout_s: float) -> int:
    """Wait until the store's applied index reaches ``index``; the index it has."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    applied = -1
    while True:
        try:
            applied = await asyncio.to_thread(_store_index, url)
        except DatabaseError:
            applied = -1  # not created or migrated yet, or locked for a moment
        if applied >= index or loop.time() > deadline:
            return applied
        await asyncio.sleep(STORE_POLL_S)
