"""A run's events: a Redis stream per run is the replayable log, and one pub/sub channel
carries them live to every api process. Both are written by one atomic script."""

import json
import re
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

CHANNEL = "hatchery:events"
MAX_EVENTS_PER_RUN = 100_000
TERMINAL = frozenset({"run.succeeded", "run.failed", "run.cancelled"})
# Redis stream ids: two unsigned 64-bit numbers.
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_U64 = 2**64
START = "0-0"

# XADD then PUBLISH in one step, so that the live message carries the stream id that a
# reconnecting client will send back as Last-Event-ID.
_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*',
                      'type', ARGV[1], 'data', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3] .. '\\n' .. id .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2])
return id
"""


def stream_key(run_id: uuid.UUID | str) -> str:
    return f"hatchery:run:{run_id}:events"


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    data: str
    # Made once per event, not once per client: one process may serve a thousand streams.
    frame: bytes = field(init=False, repr=False)
    position: tuple[int, int] = field(init=False, repr=False)
    terminal: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        frame = f"id: {self.id}\nevent: {self.type}\ndata: {self.data}\n\n".encode()
        object.__setattr__(self, "frame", frame)
        object.__setattr__(self, "position", parse_id(self.id) if self.id else (0, 0))
        object.__setattr__(self, "terminal", self.type in TERMINAL)


def parse_id(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def valid_id(event_id: str) -> bool:
    return bool(_EVENT_ID.fullmatch(event_id)) and max(parse_id(event_id)) < _U64


def encode(run_id: uuid.UUID | str, step: str | None, fields: dict[str, Any]) -> str:
    return json.dumps(
        {"run_id": str(run_id), "step": step, "ts": time.time(), **fields}, default=str
    )


async def publish(
    redis: Redis, run_id: uuid.UUID | str, type_: str, step: str | None = None, **fields: Any
) -> str:
    data = encode(run_id, step, fields)
    event_id = await cast(
        Awaitable[bytes],
        redis.eval(
            _PUBLISH, 2, stream_key(run_id), CHANNEL, type_, data, str(run_id),
            str(MAX_EVENTS_PER_RUN),
        ),
    )  # fmt: skip
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


def _decode(entries: list[Any]) -> list[Event]:
    return [
        Event(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            type=fields[b"type"].decode(),
            data=fields[b"data"].decode(),
        )
        for entry_id, fields in entries
    ]


async def replay(redis: Redis, run_id: uuid.UUID | str, after: str) -> list[Event]:
    """Every event after `after` (exclusive), oldest first."""
    return _decode(await redis.xrange(stream_key(run_id), min=f"({after}", max="+"))


async def contains(redis: Redis, run_id: uuid.UUID | str, event_id: str) -> bool:
    return bool(await redis.xrange(stream_key(run_id), min=event_id, max=event_id, count=1))


async def latest(redis: Redis, run_id: uuid.UUID | str, type_: str, scan: int = 200) -> Any:
    """The data of the newest event of a type among the last `scan` ones, if any."""
    for event in _decode(await redis.xrevrange(stream_key(run_id), count=scan)):
        if event.type == type_:
            return json.loads(event.data)
    return None


async def expire(redis: Redis, run_id: uuid.UUID | str, seconds: int) -> None:
    await redis.expire(stream_key(run_id), seconds)
