"""Cached schema documents in Redis, validated on every read, built once at a time."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

PREFIX = "hatchery:schema:"


@dataclass(frozen=True)
class Entry:
    probe: str
    checksum: str
    verified_at: float
    etag: str
    body: bytes


def key(environment_id: uuid.UUID, variant: str) -> str:
    return f"{PREFIX}{environment_id}:{variant}"


async def read(redis: Redis, cache_key: str) -> Entry | None:
    values = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(cache_key))
    if not values or b"body" not in values:
        return None
    return Entry(
        probe=values[b"probe"].decode(),
        checksum=values[b"checksum"].decode(),
        verified_at=float(values[b"verified_at"]),
        etag=values[b"etag"].decode(),
        body=values[b"body"],
    )


async def write(redis: Redis, cache_key: str, entry: Entry, ttl_seconds: int) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            cache_key,
            mapping={
                "probe": entry.probe,
                "checksum": entry.checksum,
                "verified_at": entry.verified_at,
                "etag": entry.etag,
                "body": entry.body,
            },
        )
        pipe.expire(cache_key, ttl_seconds)
        await pipe.execute()


async def mark_verified(redis: Redis, cache_key: str, probe: str) -> None:
    await cast(
        Awaitable[int], redis.hset(cache_key, mapping={"probe": probe, "verified_at": time.time()})
    )


async def invalidate(redis: Redis, environment_id: uuid.UUID) -> None:
    """Drop every cached document of an environment (after Hatchery changed it)."""
    async for cache_key in redis.scan_iter(match=f"{PREFIX}{environment_id}:*", count=500):
        await redis.delete(cache_key)


class SingleFlight:
    """Concurrent requests for the same document share one introspection."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[Entry]] = {}

    async def run(self, flight_key: str, build: Callable[[], Awaitable[Entry]]) -> Entry:
        flight = self._flights.get(flight_key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[flight_key] = flight
        try:
            entry = await build()
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except Exception as exc:
            flight.set_exception(exc)
            # Retrieved here so that a flight nobody else awaited logs no warning.
            flight.exception()
            raise
        else:
            flight.set_result(entry)
            return entry
        finally:
            del self._flights[flight_key]
