"""The state one gateway application holds, under one typed application key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from cluster.config import ClusterConfig, GatewaySettings
from gateway.batcher import Batcher
from gateway.cluster_port import ClusterPort
from gateway.edge_cache import EdgeCache, FeedFollower
from gateway.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class GatewayState:
    config: ClusterConfig
    gateway_id: str
    settings: GatewaySettings
    cluster: ClusterPort
    batcher: Batcher
    cache: EdgeCache
    follower: FeedFollower
    metrics: GatewayMetrics

    @property
    def request_deadline_s(self) -> float:
        return self.settings.request_deadline_ms / 1000


STATE = web.AppKey("gateway_state", GatewayState)
