"""A run's event stream, in process: the hub on the real Redis, frames read off the
generator an SSE response sends."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import Redis

from hatchery import queue
from hatchery.embedded import EmbeddedRedis
from hatchery.events import sse, stream
from hatchery.events.hub import RESYNC, EventHub, Subscriber
from hatchery.events.stream import START

OPTIONS = sse.StreamOptions(retry_ms=1000, max_seconds=30)


@pytest.fixture
async def hub(redis_server: EmbeddedRedis) -> AsyncIterator[EventHub]:
    # Ticks rare enough that only what a test does makes a stream read the log.
    hub = EventHub(Redis.from_url(redis_server.url), tick_seconds=3600)
    hub.start(anyio.Event())
    try:
        yield hub
    finally:
        await hub.stop()


def parsed(frame: bytes) -> list[tuple[str, str]]:
    """(id, event) of each SSE message in a write."""
    found = []
    for message in frame.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line)
        if "event" in fields:
            found.append((fields.get("id", ""), fields["event"]))
    return found


Seen = list[tuple[str, str]]


async def opened(
    hub: EventHub, jobs: queue.Queue, run_id: str, cursor: str = START
) -> tuple[Seen, Seen, asyncio.Task[Seen]]:
    """The stream's first write (its snapshot: subscribed from then on), what it has sent
    since, and a task that collects the rest until it ends."""
    frames = sse.run_events(hub, jobs, run_id, {}, None, cursor, False, OPTIONS)
    first = parsed(await anext(frames))
    seen: Seen = []

    async def rest() -> Seen:
        async for frame in frames:
            seen.extend(parsed(frame))
        return seen

    return first, seen, asyncio.create_task(rest())


async def sent(seen: Seen, count: int) -> Seen:
    async with asyncio.timeout(10):
        while len(seen) < count:
            await asyncio.sleep(0.01)
    return list(seen)


async def test_a_stream_replays_after_the_clients_id_then_follows_live_without_repeats(
    hub: EventHub, jobs: queue.Queue
) -> None:
    run_id = str(uuid.uuid4())
    first = await stream.publish(jobs, run_id, "step.started", "one")
    second = await stream.publish(jobs, run_id, "step.succeeded", "one")
    snapshot, _, following = await opened(hub, jobs, run_id, cursor=first)
    third = await stream.publish(jobs, run_id, "step.started", "two")
    last = await stream.publish(jobs, run_id, "run.succeeded")
    seen = await asyncio.wait_for(following, 10)
    assert snapshot == [(first, "snapshot")]
    # Each event once, in order, nothing before the client's id, then the end.
    assert seen == [
        (second, "step.succeeded"), (third, "step.started"), (last, "run.succeeded"),
        (last, "end"),
    ]  # fmt: skip


async def test_an_unknown_or_trimmed_id_is_answered_with_reset_and_the_whole_log(
    jobs: queue.Queue,
) -> None:
    run_id = str(uuid.uuid4())
    event = await stream.publish(jobs, run_id, "step.started", "one")
    assert await sse.resolve_cursor(jobs, run_id, event) == (event, False)
    assert await sse.resolve_cursor(jobs, run_id, "1-0") == (START, True)
    assert await sse.resolve_cursor(jobs, run_id, "not-an-id") == (START, True)
    assert await sse.resolve_cursor(jobs, run_id, None) == (START, False)


async def test_a_subscriber_that_falls_behind_is_told_to_resync_instead_of_growing() -> None:
    subscriber = Subscriber(capacity=3)
    for i in range(4):  # one more than it holds: what it held is dropped for a resync
        subscriber.deliver(stream.Event(id=f"{i + 1}-0", type="step.log", data="{}"))
    assert await subscriber.take() == [RESYNC]
    later = stream.Event(id="5-0", type="step.log", data="{}")
    subscriber.deliver(later)
    assert await subscriber.take() == [later]


async def test_a_stream_told_to_resync_catches_up_from_the_log_missing_nothing(
    hub: EventHub, jobs: queue.Queue
) -> None:
    run_id = str(uuid.uuid4())
    _, seen, following = await opened(hub, jobs, run_id)
    # Logged while the live messages were lost (written without them) ...
    ids = [
        (await jobs.xadd(stream.stream_key(run_id), {"type": "step.log", "data": "{}"})).decode()
        for _ in range(3)
    ]
    # ... and the hub's subscription dropped: on resubscribing it tells every stream to
    # catch up from the log.
    await jobs.client_kill_filter(_type="pubsub")
    assert [i for i, _ in await sent(seen, len(ids))] == ids
    last = await stream.publish(jobs, run_id, "run.failed")
    assert (await asyncio.wait_for(following, 10))[-2:] == [(last, "run.failed"), (last, "end")]
