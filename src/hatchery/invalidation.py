"""What api processes keep in memory between requests, and how every process learns at
once that it must forget it: a message on one Redis channel, heard by each process's
event hub. A process that may have missed messages (its subscription dropped) forgets
everything; the short lifetime of each entry bounds staleness should even that fail."""

import uuid

from cachetools import TTLCache
from redis.asyncio import Redis

from hatchery.keys.models import ApiKey
from hatchery.projects.models import Environment

CHANNEL = "hatchery:invalidate"
KEYS = "keys"
ENVIRONMENTS = "environments"


class Caches:
    def __init__(self, seconds: float, capacity: int = 10_000) -> None:
        # Detached copies, never rows of a session: a rollback elsewhere cannot expire them.
        self.keys: TTLCache[str, ApiKey] = TTLCache(capacity, seconds)  # by token digest
        self.environments: TTLCache[tuple[uuid.UUID, str], Environment] = TTLCache(
            capacity, seconds
        )

    def forget(self, what: str | None) -> None:
        """Drop what changed; everything when `what` is None (messages may be lost)."""
        if what in (KEYS, None):
            self.keys.clear()
        if what in (ENVIRONMENTS, None):
            self.environments.clear()


async def announce(redis: Redis, what: str, here: Caches | None = None) -> None:
    """Tell every api process to forget `what`; this one (`here`) before returning."""
    if here is not None:
        here.forget(what)
    await redis.publish(CHANNEL, what)
