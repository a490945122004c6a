"""Rate limits per API key and per client address, counted in Redis so that they hold
across api replicas: sliding window counters (the current and the previous fixed window,
the previous weighted by how much of it still overlaps the sliding window).

Every authenticated request counts against its key and its address, both in one Lua
script: one round trip (the `limits` library's strategies take one per limit, and a
request has two); deployment reports and event streams also count against limits
of their own. The limits are read with the `limits` library's notation (`1200/minute`).
A Redis outage lets requests through (readiness reports it) rather than refusing
everything.
"""

import math
import time
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from limits import RateLimitItem, parse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hatchery.config import Settings
from hatchery.errors import HatcheryError
from hatchery.keys.auth import CurrentKey, stream_reader
from hatchery.keys.models import ApiKey

log = structlog.get_logger("hatchery.ratelimit")
PREFIX = "hatchery:ratelimit"

# KEYS: per limit, its current and previous window's counter. ARGV: per limit, its
# amount, its window (ms) and how far into the current window now is (ms). Counts the
# request against every limit only if it is under all of them; else returns the index
# of the first it is over (1-based) and when that window ends (ms from now).
_HIT = """
local n = #KEYS / 2
for i = 1, n do
  local amount, window, into = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local current = tonumber(redis.call('GET', KEYS[2*i-1]) or '0')
  local previous = tonumber(redis.call('GET', KEYS[2*i]) or '0')
  if previous * (window - into) / window + current + 1 > amount then
    return {i, window - into}
  end
end
for i = 1, n do
  redis.call('INCR', KEYS[2*i-1])
  redis.call('PEXPIRE', KEYS[2*i-1], 2 * tonumber(ARGV[3*i-1]))
end
return {0, 0}
"""


class TooManyRequests(HatcheryError):
    status, problem, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


@dataclass(frozen=True)
class Count:
    """One request against one limit, for one identity (a key id, an address)."""

    item: RateLimitItem
    what: str
    identity: str


class RateLimiter:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        # The process's own Redis client (its owner closes it).
        self._hit = redis.register_script(_HIT)
        self.enabled = settings.rate_limits_enabled
        self.per_key = parse(settings.rate_limit_per_key)
        self.per_address = parse(settings.rate_limit_per_address)
        self.deployments = parse(settings.rate_limit_deployments)
        self.streams = parse(settings.rate_limit_streams)

    async def request(self, address: str, key_id: str | None) -> None:
        """An authenticated route's request: against its address and (once its key is
        known: refused requests count too, so guessing tokens is limited) its key."""
        counts = [Count(self.per_address, "address", address)]
        if key_id is not None:
            counts.append(Count(self.per_key, "key", key_id))
        await self.hit(*counts)

    async def hit(self, *counts: Count) -> None:
        """Count one request against every limit in one round trip; 429 with Retry-After
        (and nothing counted) when it is over one of them."""
        if not self.enabled:
            return
        now_ms = int(time.time() * 1000)
        keys: list[str] = []
        args: list[int] = []
        for count in counts:
            window = count.item.get_expiry() * 1000
            index, into = divmod(now_ms, window)
            name = f"{PREFIX}:{count.what}:{count.item.amount}/{window}:{count.identity}"
            keys += [f"{name}:{index}", f"{name}:{index - 1}"]
            args += [count.item.amount, window, into]
        try:
            over, reset_ms = await self._hit(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            return
        if over:
            count = counts[int(over) - 1]
            retry_after = max(1, math.ceil(int(reset_ms) / 1000))
            raise TooManyRequests(f"Over the limit of {count.item} for {count.what}", retry_after)


async def _deployments(request: Request, key: CurrentKey) -> None:
    limiter: RateLimiter = request.state.rate_limiter
    await limiter.hit(Count(limiter.deployments, "deployments", str(key.id)))


async def _streams(request: Request, key: Annotated[ApiKey, Depends(stream_reader)]) -> None:
    limiter: RateLimiter = request.state.rate_limiter
    await limiter.hit(Count(limiter.streams, "streams", str(key.id)))


# For the signatures of routes with limits of their own (after their key parameter).
DeploymentsLimited = Annotated[None, Depends(_deployments)]
StreamsLimited = Annotated[None, Depends(_streams)]
