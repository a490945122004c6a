"""One Redis pub/sub subscription per api process, shared by all of its SSE clients."""

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hatchery import invalidation
from hatchery.events.stream import CHANNEL, Event

log = structlog.get_logger("hatchery.events")

# Put in a subscriber's queue when live delivery may have missed events (a lost
# subscription, a full queue): the client then catches up from the stream.
RESYNC = Event(id="", type="resync", data="")
# Put in every queue now and then: pub/sub is at-most-once, so each stream checks the
# log, and its own lifetime, without a timer of its own.
TICK = Event(id="", type="tick", data="")
# Put in every queue when the process is shutting down: each stream says goodbye.
SHUTDOWN = Event(id="", type="shutdown", data="")
_CHANNEL = CHANNEL.encode()


class Subscriber:
    """What one stream has not sent yet. A list and one future rather than an
    asyncio.Queue: cheaper per event, and a stream that falls behind takes everything
    pending in one go."""

    __slots__ = ("_capacity", "_pending", "_waiter")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._pending: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, event: Event) -> None:
        if len(self._pending) < self._capacity:
            self._pending.append(event)
        else:
            # A slow client: drop what it cannot take and let it catch up from the stream.
            self._pending = [RESYNC]
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Event]:
        """Everything delivered since the last call, waiting for at least one event."""
        if not self._pending:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        events, self._pending = self._pending, []
        return events


class EventHub:
    def __init__(
        self,
        redis: Redis,
        tick_seconds: float,
        queue_capacity: int = 1000,
        forget: Callable[[str | None], None] = lambda what: None,
    ) -> None:
        """`forget` hears the invalidation channel (see hatchery.invalidation) on the
        same subscription: None when messages may have been missed."""
        self._redis = redis
        self._forget = forget
        self._tick_seconds = tick_seconds
        self._capacity = queue_capacity
        self._subscribers: defaultdict[str, set[Subscriber]] = defaultdict(set)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, shutting_down: anyio.Event) -> None:
        """Listen and tick; once `shutting_down` is set, tell every stream to close."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="event-hub"),
            asyncio.create_task(self._tick(), name="event-hub-tick"),
            asyncio.create_task(self._farewell(shutting_down), name="event-hub-farewell"),
        ]

    async def _farewell(self, shutting_down: anyio.Event) -> None:
        await shutting_down.wait()
        self._deliver_all(SHUTDOWN)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose(close_connection_pool=True)

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

    def _deliver_all(self, event: Event) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscriber in subscribers:
                subscriber.deliver(event)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)
            self._deliver_all(TICK)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL, invalidation.CHANNEL)
                self._deliver_all(RESYNC)
                self._forget(None)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message["type"] != "message":
                        continue
                    if message["channel"] == _CHANNEL:
                        self._dispatch(message["data"])
                    else:
                        self._forget(message["data"].decode())
            except (RedisError, OSError) as exc:
                log.warning("event_hub_disconnected", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
