"""Shared clients of the api process, as dependency aliases for route signatures.

Each is a part of the lifespan state (`hatchery.app.State`), read here and nowhere else.
The providers are async on purpose: FastAPI runs a plain `def` dependency in a worker
thread, a needless hop on every request.
"""

from typing import Annotated

import anyio
from fastapi import Depends, Header, Request
from redis.asyncio import Redis

from hatchery import invalidation, queue
from hatchery.config import Settings
from hatchery.events.hub import EventHub


async def settings(request: Request) -> Settings:
    found: Settings = request.state.settings
    return found


async def jobs(request: Request) -> queue.Queue:
    found: queue.Queue = request.state.jobs
    return found


async def redis(request: Request) -> Redis:
    # The same connection pool as the job queue's: one Redis client per process.
    found: Redis = request.state.jobs
    return found


async def hub(request: Request) -> EventHub:
    found: EventHub = request.state.hub
    return found


async def caches(request: Request) -> invalidation.Caches:
    found: invalidation.Caches = request.state.caches
    return found


async def shutting_down(request: Request) -> anyio.Event:
    found: anyio.Event = request.state.shutting_down
    return found


SettingsDep = Annotated[Settings, Depends(settings)]
JobsDep = Annotated[queue.Queue, Depends(jobs)]
RedisDep = Annotated[Redis, Depends(redis)]
HubDep = Annotated[EventHub, Depends(hub)]
CachesDep = Annotated[invalidation.Caches, Depends(caches)]
ShuttingDownDep = Annotated[anyio.Event, Depends(shutting_down)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Sending the same key again returns what the first request made (200).",
    ),
]
