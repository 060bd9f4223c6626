"""Token buckets in Redis, shared by every gateway: one atomic Lua script per request.

The script is bots.buckets.take_all in Lua (keep the two in step): it reads every
bucket of the request, refills it from the time elapsed, and takes the cost from all of
them or from none. The time is Redis's own (``TIME`` inside the script), so gateways
whose clocks disagree still agree on every bucket. A bucket key expires once the bucket
would be full again (``PEXPIRE``): a missing key is a full bucket, so nothing is lost.
Numbers go in and out as strings with 17 significant digits, because Redis turns a Lua
number it returns into an integer.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from bots.buckets import EPSILON_TOKENS, Limit, Verdict, full_after_s

# ARGV: the epsilon, then per key: rate, burst, cost, ttl_ms.
# Returns {index of the refusing bucket (0: allowed), seconds to wait}.
TAKE_ALL_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local eps = tonumber(ARGV[1])
local state = {}
local worst, worst_wait = 0, 0
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 4
  local rate = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then
    tokens, ts = burst, now
  elseif now > ts then
    tokens, ts = math.min(burst, tokens + (now - ts) * rate), now
  end
  state[i] = {tokens, ts}
  if tokens + eps < cost then
    local wait = math.max(0, ts - now) + (cost - tokens) / rate
    if worst == 0 or wait > worst_wait then
      worst, worst_wait = i, wait
    end
  end
end
if worst ~= 0 then
  return {worst, string.format('%.17g', worst_wait)}
end
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 4
  local cost = tonumber(ARGV[base + 3])
  local left = math.max(0, state[i][1] - cost)
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', left),
             'ts', string.format('%.17g', state[i][2]))
  redis.call('PEXPIRE', KEYS[i], ARGV[base + 4])
end
return {0, '0'}
"""

# Kept a little longer than the refill time: a key expiring a hair early would hand a
# bucket that is not quite full a full one.
EXPIRY_MARGIN_MS = 1000


def _ttl_ms(limit: Limit) -> int:
    return math.ceil(full_after_s(limit.rate, limit.burst) * 1000) + EXPIRY_MARGIN_MS


class RedisLimiter:
    """The buckets of every gateway sharing ``redis`` under ``prefix``."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.prefix = prefix
        self._script = redis.register_script(TAKE_ALL_LUA)

    def key(self, limit: Limit) -> str:
        return f"{self.prefix}bucket:{limit.kind}:{limit.key}"

    async def take(self, limits: list[Limit]) -> Verdict:
        """Take one request's tokens from every bucket; raises what Redis raises."""
        args: list[str | float | int] = [repr(EPSILON_TOKENS)]
        for lim in limits:
            args += [repr(lim.rate), lim.burst, lim.cost, _ttl_ms(lim)]
        answer = await self._script(keys=[self.key(lim) for lim in limits], args=args)
        index, wait = int(answer[0]), float(answer[1])
        if index == 0:
            return Verdict(True)
        return Verdict(False, wait, limits[index - 1].kind)
