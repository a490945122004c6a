"""The SSE stream of a run: snapshot, replay after the client's id, live events, end.

It touches Redis only: the snapshot is built from Postgres before streaming starts, so
no database session is held for the life of a connection.
"""

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sse_starlette import EventSourceResponse
from starlette.types import Message, Send

from hatchery import metrics
from hatchery.events import stream
from hatchery.events.hub import RESYNC, SHUTDOWN, TICK, EventHub, Subscriber
from hatchery.events.stream import START, Event


@dataclass(frozen=True)
class StreamOptions:
    retry_ms: int
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
    with hub.subscribe(run_id) as subscriber, metrics.SSE_CONNECTIONS.track_inprogress():
        if reset:
            yield _frame(START, "reset", {"run_id": run_id, "ts": time.time()}, options.retry_ms)
        yield _frame(cursor, "snapshot", snapshot, None if reset else options.retry_ms)
        last = stream.parse_id(cursor)
        events = await stream.replay(redis, run_id, cursor)
        while True:
            # Everything available goes out in one write: a stream that falls behind
            # catches up in a few large writes instead of many small ones.
            frames = []
            for event in events:
                if event.position <= last:
                    continue
                last = event.position
                frames.append(event.frame)
                if event.terminal:
                    frames.append(_end(run_id, event.id, event.type.removeprefix("run.")))
                    yield b"".join(frames)
                    return
            if frames:
                yield frames[0] if len(frames) == 1 else b"".join(frames)
            if finished_status is not None:
                # Finished, and its log expired or never got a terminal event.
                yield _end(run_id, _id(last), finished_status)
                return
            events = await _next_events(subscriber, redis, run_id, last)
            if events and events[0] is SHUTDOWN:
                # The process is stopping: reconnect (with Last-Event-ID) to another.
                yield f"retry: {options.retry_ms}\n: server shutting down, reconnect\n\n".encode()
                return
            if time.monotonic() > deadline:
                # Capped lifetime: the client reconnects with its last id and misses nothing.
                return


def _id(position: tuple[int, int]) -> str:
    return f"{position[0]}-{position[1]}"


async def _next_events(
    subscriber: Subscriber, redis: Redis, run_id: str, last: tuple[int, int]
) -> list[Event]:
    """Wait for live events; read the log instead when live delivery may have missed some."""
    events = await subscriber.take()
    if any(event is SHUTDOWN for event in events):  # `in` would compare every event's fields
        return [SHUTDOWN]
    for event in events:
        if event is RESYNC or event is TICK:
            return await stream.replay(redis, run_id, _id(last))
    return events


def _end(run_id: str, last: str, status: str | None) -> bytes:
    return _frame(last, "end", {"run_id": run_id, "status": status, "ts": time.time()})


class EventStreamResponse(EventSourceResponse):
    """sse-starlette's response, minus an anyio cancel scope per frame when no send
    timeout is set: with a thousand clients of one process that scope was a third of
    the cost of delivering an event (bench/sse_fanout.py)."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)
