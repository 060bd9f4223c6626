"""Load from wrk (Debian's ``wrk``, LuaJIT scripts): a C client that is not the limit.

Scripts are generated per run. Every script spreads wrk's threads over the target hosts
(thread ``i`` connects to host ``i mod len(hosts)``; wrk splits ``-c`` evenly over its
threads) and prints one JSON line from ``done()``: requests, duration, socket errors,
latency percentiles and, for writes, the count of each HTTP status (a ``response()``
callback; reads leave it out so that wrk sends its static request without calling Lua).

Writes (``reserve_script``): every request is ``POST PATH`` for one shopper with a bearer
token minted beforehand (gateway.identity), a fresh ``Idempotency-Key`` each, and a new
shopper every ``per_user`` requests (the ledger allows 100 active holds per cart).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.harness.machine import children_cpu_seconds

WRK_TIMEOUT_S = 10  # a request slower than this counts as a timeout error

_DONE = """
local threads = {}
local nthreads = %(nthreads)d
local hosts = {%(hosts)s}

function setup(thread)
  local i = #threads + 1
  local h = hosts[((i - 1) %% #hosts) + 1]
  thread.addr = wrk.lookup(h[1], h[2])[1]
  thread:set("tid", i)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local e = summary.errors
  local counts = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for code, n in pairs(s) do counts[code] = (counts[code] or 0) + n end
    end
  end
  local parts = {}
  for code, n in pairs(counts) do table.insert(parts, string.format('"%%d":%%d', code, n)) end
  io.write(string.format(
    '{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,' ..
    '"timeout":%%d,"p50_us":%%d,"p95_us":%%d,"p99_us":%%d,"statuses":{%%s}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(95)),
    math.floor(latency:percentile(99)), table.concat(parts, ",")))
end
"""

_WRITES = """
local users = {%(users)s}
local tokens = {%(tokens)s}
local per_user = %(per_user)d
local product = "%(product)s"
local path = "%(path)s"
local prefix = "%(prefix)s"
local counter = 0
statuses = {}

function request()
  counter = counter + 1
  -- thread tid takes users tid, tid + nthreads, tid + 2 nthreads, ...
  local slot = math.floor((counter - 1) / per_user) * nthreads + tid
  slot = ((slot - 1) %% #users) + 1
  local body = '{"user_id":"' .. users[slot] .. '","product_id":"' .. product ..
    '","quantity":1}'
  local headers = {}
  headers["Authorization"] = "Bearer " .. tokens[slot]
  headers["Idempotency-Key"] = prefix .. tid .. "-" .. counter
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    statuses: dict[int, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0


def available() -> bool:
    return shutil.which("wrk") is not None


def _hosts(hosts: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f'{{"{h}", "{p}"}}' for h, p in hosts)


def read_script(hosts: Sequence[tuple[str, int]], threads: int) -> str:
    """A script for GETs of the command line's URL path, spread over ``hosts``."""
    return _DONE % {"nthreads": threads, "hosts": _hosts(hosts)}


def reserve_script(
    hosts: Sequence[tuple[str, int]], threads: int, *, path: str, product: str,
    users: Sequence[str], tokens: Sequence[str], per_user: int, prefix: str,
) -> str:  # fmt: skip
    """A script of POSTs, one shopper per ``per_user`` requests, unique keys."""
    if len(users) != len(tokens) or not users:
        raise ValueError("one token per user, at least one user")
    quoted = ", ".join(f'"{u}"' for u in users)
    toks = ", ".join(f'"{t}"' for t in tokens)
    writes = _WRITES % {"users": quoted, "tokens": toks, "per_user": per_user,
                        "product": product, "path": path, "prefix": prefix}  # fmt: skip
    return _DONE % {"nthreads": threads, "hosts": _hosts(hosts)} + writes


def run(
    url: str, script: Path, *, threads: int, connections: int, seconds: float,
    taskset: str | None = None,
) -> WrkResult:  # fmt: skip
    """One wrk run; its summary, and the CPU seconds wrk itself used."""
    # wrk takes whole seconds only.
    argv = ["wrk", f"-t{threads}", f"-c{max(connections, threads)}", f"-d{max(1, round(seconds))}s",
            "--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(script), url]  # fmt: skip
    if taskset:
        argv = ["taskset", "-c", taskset, *argv]
    cpu_before = children_cpu_seconds()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
    cpu = children_cpu_seconds() - cpu_before
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    s = json.loads(lines[-1])
    duration = s["duration_us"] / 1e6
    return WrkResult(
        requests=s["requests"],
        seconds=duration,
        per_s=s["requests"] / duration if duration else 0.0,
        p50_ms=s["p50_us"] / 1000,
        p95_ms=s["p95_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        socket_errors=s["connect"] + s["read"] + s["write"] + s["timeout"],
        non_2xx=s["status"],
        statuses={int(k): int(v) for k, v in s["statuses"].items()},
        client_cpu_s=cpu,
    )
