"""What api processes keep in memory between requests, and how every process learns at
once that it must forget it: a message on one Redis channel, heard by each process's
event hub. A process that may have missed messages (its subscription dropped) forgets
everything; the short lifetime of each entry bounds staleness should even that fail."""

from typing import Any

from cachetools import TTLCache
from redis.asyncio import Redis

CHANNEL = "hatchery:invalidate"
KEYS = "keys"
ENVIRONMENTS = "environments"


class Caches:
    """Named caches (`KEYS`, `ENVIRONMENTS`), each forgotten by its name. What they hold is
    their owners' business: detached copies, never rows of a session, so that a rollback
    elsewhere cannot expire them."""

    def __init__(self, seconds: float, capacity: int = 10_000) -> None:
        self._seconds, self._capacity = seconds, capacity
        self._named: dict[str, TTLCache[Any, Any]] = {}

    def named(self, what: str) -> TTLCache[Any, Any]:
        if what not in self._named:
            self._named[what] = TTLCache(self._capacity, self._seconds)
        return self._named[what]

    def forget(self, what: str | None) -> None:
        """Drop what changed; everything when `what` is None (messages may be lost)."""
        for name, cache in self._named.items():
            if what in (name, None):
                cache.clear()


async def announce(redis: Redis, what: str, here: Caches | None = None) -> None:
    """Tell every api process to forget `what`; this one (`here`) before returning."""
    if here is not None:
        here.forget(what)
    await redis.publish(CHANNEL, what)
