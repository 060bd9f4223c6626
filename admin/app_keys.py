"""Typed keys of the console's application and request state."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import aiohttp
from aiohttp import web

from admin.bots_hub import BotsHub
from admin.cluster_port import ClusterPort
from admin.feed import FeedFollower
from admin.live import LiveHub
from admin.login_limit import LoginLimiter
from admin.metrics import ConsoleMetrics
from admin.sessions import Session
from cluster.config import ClusterConfig

CONFIG = web.AppKey("config", ClusterConfig)
STORE = web.AppKey("store", sqlite3.Connection)
CLUSTER = web.AppKey("cluster", ClusterPort)
CLOCK_MS: web.AppKey[Callable[[], int]] = web.AppKey("clock_ms")
LIMITER = web.AppKey("login_limiter", LoginLimiter)
FEED = web.AppKey("feed", FeedFollower)
HUB = web.AppKey("live_hub", LiveHub)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", ConsoleMetrics)
BOTS = web.AppKey("bots_hub", BotsHub)

SESSION_KEY = web.RequestKey("admin_session", Session)  # set by the auth middleware


def session_of(request: web.Request) -> Session:
    """The session the auth middleware attached (every console route has one)."""
    try:
        return request[SESSION_KEY]
    except KeyError:
        raise web.HTTPUnauthorized() from None
