"""What most shops use instead: one Redis decrementing stock in a Lua script.

``redis-benchmark`` (Debian's, in C) sends ``EVALSHA`` of a decrement-if-positive script
to the real Redis at 127.0.0.1:6379, against a key of its own (random prefix, deleted
afterwards), one command per round trip (no pipelining: each is one reserve answered,
as each HTTP reserve is), at each level of concurrency. No replication, no durability
(this Redis keeps nothing on disk): the figure is a ceiling of that design, not of ours.
"""

from __future__ import annotations

import csv
import io
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from loadtests.harness.machine import children_cpu_seconds

HOST = "127.0.0.1"
PORT = 6379
STOCK = 1_000_000_000  # never sold out during a run
DECREMENT = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v > 0 then return redis.call('DECR', KEYS[1]) end
return -1
"""


@dataclass(frozen=True)
class RedisStep:
    concurrency: int
    requests: int
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_s: float
    sold: int  # decrements the key saw: each request took one unit


def available() -> bool:
    return shutil.which("redis-benchmark") is not None


def run_redis_ceiling(levels: Sequence[int], requests: int) -> list[RedisStep]:
    """``requests`` EVALSHA decrements at each concurrency level."""
    key = f"bench-{secrets.token_hex(6)}:stock"
    client = redis.Redis(host=HOST, port=PORT)
    try:
        sha = str(client.script_load(DECREMENT))
        client.set(key, STOCK)
        steps = []
        for conc in levels:
            before = int(client.get(key) or 0)
            cpu_before = children_cpu_seconds()
            done = subprocess.run(
                ["redis-benchmark", "-h", HOST, "-p", str(PORT), "-c", str(conc),
                 "-n", str(requests), "--csv", "EVALSHA", sha, "1", key],
                capture_output=True, text=True, timeout=300, check=True,
            )  # fmt: skip
            cpu = children_cpu_seconds() - cpu_before
            rows = list(csv.DictReader(io.StringIO(done.stdout)))
            if not rows:
                raise RuntimeError(f"redis-benchmark printed nothing:\n{done.stderr}")
            r = rows[-1]
            sold = before - int(client.get(key) or 0)
            steps.append(RedisStep(conc, requests, float(r["rps"]), float(r["p50_latency_ms"]),
                                   float(r["p95_latency_ms"]), float(r["p99_latency_ms"]),
                                   cpu, sold))  # fmt: skip
        return steps
    finally:
        client.delete(key)
        client.close()
