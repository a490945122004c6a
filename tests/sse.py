"""A small SSE client for tests: reads frames the way EventSource does."""

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Frame:
    id: str | None
    event: str
    data: Any
    retry: int | None = None


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in fields or "data" in fields:
                data = fields.get("data", "")
                yield Frame(
                    id=fields.get("id"),
                    event=fields.get("event", "message"),
                    data=json.loads(data) if data else None,
                    retry=int(fields["retry"]) if "retry" in fields else None,
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def follow(
    client: httpx.AsyncClient,
    run_id: str,
    token: str,
    *,
    last_event_id: str | None = None,
    stop_after: int | None = None,
    until: Callable[[Frame], bool] | None = None,
    timeout: float = 120,
    ticket: str | None = None,
) -> list[Frame]:
    """Frames of a run's event stream until `end`, `stop_after` frames, or `until`;
    authenticated by `token`, or by a stream `ticket` in the URL."""
    headers = {} if ticket else {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    received: list[Frame] = []
    params = {"ticket": ticket} if ticket else {}
    async with client.stream(
        "GET", f"/api/v1/runs/{run_id}/events", headers=headers, params=params, timeout=timeout
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for frame in frames(response):
            received.append(frame)
            if frame.event == "end" or (stop_after is not None and len(received) >= stop_after):
                break
            if until is not None and until(frame):
                break
    return received
