"""Rate limits per API key and per client address, counted in Redis (the `limits`
library's sliding window) so that they hold across api replicas.

Every authenticated request counts against its key and its address; deployment reports
and event streams also count against limits of their own. A Redis outage lets requests
through (readiness reports it) rather than refusing everything.
"""

import math
import time
from typing import Annotated

import structlog
from fastapi import Depends, Request
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from hatchery.config import Settings
from hatchery.errors import HatcheryError
from hatchery.keys.auth import CurrentKey, stream_reader
from hatchery.keys.models import ApiKey

log = structlog.get_logger("hatchery.ratelimit")


class TooManyRequests(HatcheryError):
    status, problem, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class RateLimiter:
    def __init__(self, settings: Settings, pool: ConnectionPool) -> None:
        # The process's own connection pool (its owner closes it), not one of its own.
        storage = RedisStorage(
            "async+" + settings.require_redis_url(),
            implementation="redispy",
            key_prefix="hatchery:ratelimit",
            connection_pool=pool,  # type: ignore[arg-type]  # documented; typed as scalars
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self.enabled = settings.rate_limits_enabled
        self.per_key = parse(settings.rate_limit_per_key)
        self.per_address = parse(settings.rate_limit_per_address)
        self.deployments = parse(settings.rate_limit_deployments)
        self.streams = parse(settings.rate_limit_streams)

    async def hit(self, item: RateLimitItem, what: str, *identity: str) -> None:
        """Count one request; 429 with Retry-After once `identity` is over `item`."""
        if not self.enabled:
            return
        try:
            if await self._limiter.hit(item, what, *identity):
                return
            stats = await self._limiter.get_window_stats(item, what, *identity)
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            return
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyRequests(f"Over the limit of {item} for {what}", retry_after)


async def _deployments(request: Request, key: CurrentKey) -> None:
    limiter: RateLimiter = request.state.rate_limiter
    await limiter.hit(limiter.deployments, "deployments", str(key.id))


async def _streams(request: Request, key: Annotated[ApiKey, Depends(stream_reader)]) -> None:
    limiter: RateLimiter = request.state.rate_limiter
    await limiter.hit(limiter.streams, "streams", str(key.id))


# For the signatures of routes with limits of their own (after their key parameter).
DeploymentsLimited = Annotated[None, Depends(_deployments)]
StreamsLimited = Annotated[None, Depends(_streams)]
