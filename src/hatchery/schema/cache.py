"""Cached schema documents: small metadata and the body apart, so that validating an
entry (every read) or answering 304 never moves the document itself."""

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

PREFIX = "hatchery:schema:"


@dataclass(frozen=True)
class Meta:
    probe: str
    checksum: str
    verified_at: float
    etag: str


def key(environment_id: uuid.UUID, variant: str) -> str:
    return f"{PREFIX}{environment_id}:{variant}"


async def read_meta(redis: Redis, cache_key: str) -> Meta | None:
    values = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(cache_key + ":meta"))
    if not values:
        return None
    return Meta(
        probe=values[b"probe"].decode(),
        checksum=values[b"checksum"].decode(),
        verified_at=float(values[b"verified_at"]),
        etag=values[b"etag"].decode(),
    )


async def read_body(redis: Redis, cache_key: str, etag: str) -> bytes | None:
    body = await redis.get(f"{cache_key}:body:{etag}")
    return cast(bytes | None, body)


async def write(redis: Redis, cache_key: str, meta: Meta, body: bytes, ttl_seconds: int) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(f"{cache_key}:body:{meta.etag}", body, ex=ttl_seconds)
        pipe.hset(
            cache_key + ":meta",
            mapping={
                "probe": meta.probe,
                "checksum": meta.checksum,
                "verified_at": meta.verified_at,
                "etag": meta.etag,
            },
        )
        pipe.expire(cache_key + ":meta", ttl_seconds)
        await pipe.execute()


async def mark_verified(redis: Redis, cache_key: str, probe: str) -> None:
    await cast(
        Awaitable[int],
        redis.hset(cache_key + ":meta", mapping={"probe": probe, "verified_at": time.time()}),
    )


async def invalidate(redis: Redis, environment_id: uuid.UUID) -> None:
    """Drop every cached document of an environment (after Hatchery changed it)."""
    async for cache_key in redis.scan_iter(match=f"{PREFIX}{environment_id}:*", count=500):
        await redis.delete(cache_key)


class Bodies:
    """Recently served documents by ETag, in this process: a warm read of a large schema
    then moves nothing from Redis. An ETag names one content, so nothing here is stale."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self._max_bytes = max_bytes
        self._size = 0
        self._bodies: OrderedDict[str, bytes] = OrderedDict()

    def get(self, etag: str) -> bytes | None:
        body = self._bodies.get(etag)
        if body is not None:
            self._bodies.move_to_end(etag)
        return body

    def put(self, etag: str, body: bytes) -> None:
        if etag in self._bodies or len(body) > self._max_bytes:
            return
        self._bodies[etag] = body
        self._size += len(body)
        while self._size > self._max_bytes:
            _, evicted = self._bodies.popitem(last=False)
            self._size -= len(evicted)


class SingleFlight:
    """Concurrent requests for the same document share one introspection."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[tuple[Meta, bytes]]] = {}

    async def run(
        self, flight_key: str, build: Callable[[], Awaitable[tuple[Meta, bytes]]]
    ) -> tuple[Meta, bytes]:
        flight = self._flights.get(flight_key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[flight_key] = flight
        try:
            built = await build()
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except Exception as exc:
            flight.set_exception(exc)
            # Retrieved here so that a flight nobody else awaited logs no warning.
            flight.exception()
            raise
        else:
            flight.set_result(built)
            return built
        finally:
            del self._flights[flight_key]
