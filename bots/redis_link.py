"""The gateways' shared Redis (``[bots] redis_url``): one client per gateway, one key
namespace per cluster.

Every key the bot defences write starts with ``key_prefix(cluster name)``, so two
clusters (or two tests) can share one Redis without seeing each other's buckets, lists
or queue. The client does not retry on its own: the caller bounds every call by
``redis_timeout_ms`` and falls back to local state, which is what a retry would delay.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Connections are opened lazily; one that cannot be made in this long counts as failed
# even before the caller's own (shorter) deadline could cancel it.
CONNECT_TIMEOUT_S = 1.0


def key_prefix(cluster_name: str) -> str:
    """The prefix of every bot-defence key of cluster ``cluster_name``."""
    return f"flashsale:{cluster_name}:bots:"


def redis_client(url: str) -> Redis:
    """A client for ``url`` answering str, never retrying by itself."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
