"""Shared clients of the api process, as dependency aliases for route signatures.

The providers are async on purpose: FastAPI runs a plain `def` dependency in a worker
thread, a needless hop on every request.
"""

from typing import Annotated

from fastapi import Depends, Header, Request

from hatchery import queue
from hatchery.config import Settings
from hatchery.events.hub import EventHub


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _queue(request: Request) -> queue.Queue:
    job_queue: queue.Queue = request.app.state.queue
    return job_queue


async def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


SettingsDep = Annotated[Settings, Depends(_settings)]
QueueDep = Annotated[queue.Queue, Depends(_queue)]
HubDep = Annotated[EventHub, Depends(_hub)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Sending the same key again returns what the first request made (200).",
    ),
]
