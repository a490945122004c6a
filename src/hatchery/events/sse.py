"""The SSE stream of a run: snapshot, replay after the client's id, live events, end.

It touches Redis only: the snapshot is built from Postgres before streaming starts, so
no database session is held for the life of a connection.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from hatchery.events import stream
from hatchery.events.hub import RESYNC, EventHub
from hatchery.events.stream import START, Event


@dataclass(frozen=True)
class StreamOptions:
    retry_ms: int
    catch_up_seconds: float
    max_seconds: float


def _frame(event_id: str, type_: str, data: dict[str, Any], retry_ms: int | None = None) -> bytes:
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return (
        f"{retry}id: {event_id}\nevent: {type_}\ndata: {json.dumps(data, default=str)}\n\n".encode()
    )


async def resolve_cursor(redis: Redis, run_id: str, last_event_id: str | None) -> tuple[str, bool]:
    """Where to replay from, and whether the client's id must be answered with `reset`
    (unknown, trimmed, or from before a Redis restart)."""
    if not last_event_id or last_event_id in (START, "0"):
        return START, False
    if stream.valid_id(last_event_id) and await stream.contains(redis, run_id, last_event_id):
        return last_event_id, False
    return START, True


async def run_events(
    hub: EventHub,
    redis: Redis,
    run_id: str,
    snapshot: dict[str, Any],
    finished_status: str | None,
    cursor: str,
    reset: bool,
    options: StreamOptions,
) -> AsyncIterator[bytes]:
    deadline = time.monotonic() + options.max_seconds
    with hub.subscribe(run_id) as subscriber:
        if reset:
            yield _frame(START, "reset", {"run_id": run_id, "ts": time.time()}, options.retry_ms)
        yield _frame(cursor, "snapshot", snapshot, None if reset else options.retry_ms)
        last = cursor

        def end(event: Event | None) -> bytes:
            status = event.type.removeprefix("run.") if event else finished_status
            return _frame(last, "end", {"run_id": run_id, "status": status, "ts": time.time()})

        async def catch_up() -> AsyncIterator[Event]:
            for event in await stream.replay(redis, run_id, last):
                yield event

        pending: AsyncIterator[Event] | None = catch_up()
        while True:
            if pending is not None:
                async for event in pending:
                    last = event.id
                    yield event.frame()
                    if event.terminal:
                        yield end(event)
                        return
                pending = None
                if finished_status is not None:
                    # Finished, and its log expired or never got a terminal event.
                    yield end(None)
                    return
            timeout = min(options.catch_up_seconds, deadline - time.monotonic())
            if timeout <= 0:
                # Capped lifetime: the client reconnects with its last id and misses nothing.
                return
            try:
                event = await asyncio.wait_for(subscriber.queue.get(), timeout)
            except TimeoutError:
                pending = catch_up()  # pub/sub is at-most-once: check the log now and then
                continue
            if event is RESYNC:
                pending = catch_up()
            elif stream.parse_id(event.id) > stream.parse_id(last):
                last = event.id
                yield event.frame()
                if event.terminal:
                    yield end(event)
                    return
