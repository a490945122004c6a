import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, status
from sse_starlette import EventSourceResponse

from hatchery.db import SessionDep
from hatchery.deps import HubDep, RedisDep, SettingsDep, ShuttingDownDep
from hatchery.errors import error_responses
from hatchery.events import sse, stream
from hatchery.keys import tickets
from hatchery.keys.auth import RunsReader, RunsWriter, check_project, stream_reader
from hatchery.keys.models import ApiKey
from hatchery.ratelimit import StreamsLimited
from hatchery.runs import service
from hatchery.runs.schemas import RunList, RunOut, StreamTicket, run_out

router = APIRouter(tags=["runs"], responses=error_responses(401, 403, 404, 422))


@router.get("/runs/{run_id}", response_model=RunOut, name="get_run", summary="Get a run")
async def get_run(
    run_id: uuid.UUID, session: SessionDep, settings: SettingsDep, key: RunsReader
) -> RunOut:
    """A run with its steps, timestamps and result. A secret in the result (an initialize
    run's deploy token) is shown once: on the first read by the key that started the run
    (or an admin key) after it succeeded; other readers, and later reads, see its prefix."""
    run = await service.get_run(session, run_id)
    check_project(key, run.project_id)
    run = await service.read_run(session, run_id, key, settings.encryption_secret)
    return run_out(run, run.result)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    name="cancel_run",
    summary="Cancel a run",
    responses=error_responses(409),
)
async def cancel_run(
    run_id: uuid.UUID, session: SessionDep, redis: RedisDep, key: RunsWriter
) -> RunOut:
    """Ask a run to stop: a queued run is cancelled at once, a running one between its
    steps. A finished run answers 409."""
    check_project(key, (await service.get_run(session, run_id)).project_id)
    return run_out(await service.cancel_run(session, redis, run_id))


@router.get(
    "/projects/{project_id}/runs",
    response_model=RunList,
    name="list_project_runs",
    summary="List a project's runs",
)
async def list_project_runs(
    project_id: uuid.UUID,
    session: SessionDep,
    key: RunsReader,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> RunList:
    """The project's runs, newest first."""
    check_project(key, project_id)
    runs, next_cursor = await service.list_runs(session, project_id, limit=limit, cursor=cursor)
    return RunList(items=[run_out(r) for r in runs], next_cursor=next_cursor)


@router.post(
    "/runs/{run_id}/events/tickets",
    status_code=status.HTTP_201_CREATED,
    response_model=StreamTicket,
    name="create_stream_ticket",
    summary="A ticket to follow a run without a header",
    responses=error_responses(404),
)
async def create_stream_ticket(
    run_id: uuid.UUID, session: SessionDep, settings: SettingsDep, redis: RedisDep,
    key: RunsReader,
) -> StreamTicket:  # fmt: skip
    """For a browser's `EventSource`, which cannot send `Authorization`: a ticket to put in
    the events URL (`?ticket=`) instead of a key. It follows this run only, for
    `HATCHERY_SSE_TICKET_SECONDS`, reconnections included, while its key is not revoked."""
    check_project(key, (await service.get_run(session, run_id)).project_id)
    ticket = await tickets.issue(redis, key.id, run_id, settings.sse_ticket_seconds)
    return StreamTicket(
        ticket=ticket,
        expires_in=settings.sse_ticket_seconds,
        events_url=f"/api/v1/runs/{run_id}/events?ticket={ticket}",
    )


@router.get(
    "/runs/{run_id}/events",
    name="follow_run",
    summary="Follow a run (SSE)",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream"}},
)
async def follow_run(
    run_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    hub: HubDep,
    shutting_down: ShuttingDownDep,
    key: Annotated[ApiKey, Depends(stream_reader)],
    _: StreamsLimited,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[
        str | None, Query(description="Resume after this event id (for clients without headers).")
    ] = None,
) -> EventSourceResponse:
    """Server-sent events: a `snapshot` of the run, every event after `Last-Event-ID` (or
    `?after=`), live events, and a final `end`. Works with `EventSource` and `curl -N`."""
    run = await service.get_run(session, run_id)
    check_project(key, run.project_id)
    cursor, reset = await sse.resolve_cursor(redis, str(run_id), last_event_id or after)
    snapshot = {
        "run_id": str(run_id),
        "ts": time.time(),
        "run": run_out(run).model_dump(mode="json"),
        "progress": await stream.latest(redis, run_id, "step.progress"),
    }
    events = sse.run_events(
        hub,
        redis,
        str(run_id),
        snapshot,
        run.status if run.status.finished else None,
        cursor,
        reset,
        sse.StreamOptions(
            retry_ms=settings.sse_retry_ms, max_seconds=settings.sse_max_connection_seconds
        ),
    )
    return sse.EventStreamResponse(
        events,
        ping=settings.sse_ping_seconds,
        # On shutdown the stream sends a retry hint and ends; cancelled if it has not
        # within the grace period, well inside uvicorn's own graceful timeout.
        shutdown_event=shutting_down,
        shutdown_grace_period=min(2.0, settings.shutdown_grace_seconds / 2),
    )
