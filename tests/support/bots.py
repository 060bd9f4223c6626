"""In-process gateways with the bot defences on, over real HTTP (aiohttp test server) and
the real Redis at 127.0.0.1:6379 when a test asks for it.

Each gateway gets the cluster name it is given, which is also its Redis key prefix
(bots.redis_link.key_prefix): two gateways of one test share their buckets and policy,
two tests never do. ``delete_keys`` removes a test's keys afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from bots.redis_link import key_prefix
from cluster.auth import internal_token
from cluster.config import ClusterConfig, build_config
from gateway.identity import issue_token
from gateway.server import create_app
from gateway.state import STATE
from tests.test_gateway_api import InProcessCluster

SECRET = "bots-test-secret-0123456789abcdef0123456789"
REDIS_URL = "redis://127.0.0.1:6379/0"
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# Only the defences of gateway.defences: proof of work and the waiting room are off
# unless a test turns them on (they have tests of their own).
ONLY_LIMITS: Mapping[str, Any] = {"challenge": False, "waiting_room": False}


def cluster_name() -> str:
    return "bots-" + secrets.token_hex(6)


def bots_config(tmp_path: Path, name: str, **bots: Any) -> ClusterConfig:
    return build_config(
        {
            "cluster": {"secret": SECRET, "name": name},
            "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
            "gateways": [{"id": "g1", "listen": "127.0.0.1:3"}],
            "gateway": {"feed_wait_ms": 100},
            "bots": {**ONLY_LIMITS, **bots},
        },
        tmp_path,
    )


class Gateway:
    """One in-process gateway and a client to it from a chosen loopback address."""

    def __init__(self, client: TestClient[Any, Any], cluster: InProcessCluster) -> None:
        self.client = client
        self.cluster = cluster
        assert client.app is not None
        self.app = client.app

    @staticmethod
    async def start(config: ClusterConfig, *, source_ip: str = "127.0.0.1") -> Gateway:
        cluster = InProcessCluster(config)
        server = TestServer(create_app(config, "g1", cluster=cluster))
        # A client from 127.0.0.x: the gateway sees that as the client's IP.
        client: TestClient[Any, Any] = TestClient(
            server,
            connector=TCPConnector(local_addr=(source_ip, 0)),
            headers={"User-Agent": BROWSER_UA},
        )
        await client.start_server()
        return Gateway(client, cluster)

    async def other_client(self, source_ip: str) -> ClientSession:
        """A client of the same server from ``source_ip`` (close it; the server stays)."""
        return ClientSession(
            base_url=self.client.server.make_url("/"),
            connector=TCPConnector(local_addr=(source_ip, 0)),
            headers={"User-Agent": BROWSER_UA},
        )

    def create(self, pid: str, stock: int) -> None:
        result = self.cluster.apply(
            [{"type": "create_product", "key": f"create-{pid}", "product_id": pid,
              "name": f"Product {pid}", "price_minor": 1999, "total_stock": stock}]
        )  # fmt: skip
        assert result.results[0]["ok"], result.results[0]

    async def close(self) -> None:
        await self.client.close()


def shopper(user: str, ttl_s: int = 600) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, user, ttl_s)}"}


def internal() -> dict[str, str]:
    return {"Authorization": f"Bearer {internal_token(SECRET)}"}


async def delete_keys(name: str) -> None:
    """Remove every Redis key of cluster ``name``."""
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        keys = [k async for k in redis.scan_iter(match=key_prefix(name) + "*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def start_gateway(
    gateways: list[Gateway], tmp_path: Path, name: str | None = None, **bots: Any
) -> Gateway:
    """One more gateway of cluster ``name`` (a fresh one by default), appended to
    ``gateways`` so that ``close_gateways`` closes it."""
    config = bots_config(tmp_path / f"g{len(gateways)}", name or cluster_name(), **bots)
    gw = await Gateway.start(config)
    gateways.append(gw)
    return gw


async def close_gateways(gateways: list[Gateway]) -> None:
    """Close every gateway and remove its cluster's Redis keys."""
    for gw in gateways:
        await gw.close()
    for name in {gw.app[STATE].config.name for gw in gateways}:
        await delete_keys(name)
