"""One Redis pub/sub subscription per api process, shared by all of its SSE clients."""

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hatchery.events.stream import CHANNEL, Event

log = structlog.get_logger("hatchery.events")

# Put in a subscriber's queue when live delivery may have missed events (a lost
# subscription, a full queue): the client then catches up from the stream.
RESYNC = Event(id="", type="resync", data="")


class Subscriber:
    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(capacity)

    def deliver(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A slow client: drop what it cannot take and let it catch up from the stream.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)


class EventHub:
    def __init__(self, redis: Redis, queue_capacity: int = 1000) -> None:
        self._redis = redis
        self._capacity = queue_capacity
        self._subscribers: defaultdict[str, set[Subscriber]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose(close_connection_pool=True)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    @contextlib.contextmanager
    def subscribe(self, run_id: str) -> Iterator[Subscriber]:
        subscriber = Subscriber(self._capacity)
        self._subscribers[run_id].add(subscriber)
        try:
            yield subscriber
        finally:
            subscribers = self._subscribers.get(run_id)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[run_id]

    def _dispatch(self, payload: bytes) -> None:
        run_id, event_id, type_, data = payload.decode().split("\n", 3)
        subscribers = self._subscribers.get(run_id)
        if subscribers:
            event = Event(id=event_id, type=type_, data=data)
            for subscriber in subscribers:
                subscriber.deliver(event)

    def _resync_all(self) -> None:
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.deliver(RESYNC)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.connected.set()
                self._resync_all()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._dispatch(message["data"])
            except (RedisError, OSError) as exc:
                self.connected.clear()
                log.warning("event_hub_disconnected", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
