import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hatchery.runs.models import RunKind, RunStatus, RunTrigger, StepStatus


class StepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    status: StepStatus
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: str | None
    output: dict[str, Any] | None


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    kind: RunKind
    status: RunStatus
    trigger: RunTrigger
    attempt: int
    steps: list[StepOut]
    events_url: str = Field(description="Follow the run: `text/event-stream` (SSE).")
    result: dict[str, Any] | None = Field(
        description="What the run produced. An initialize run's deploy token appears here "
        "once, on the first read after the run succeeds by the key that started it (or an "
        "admin); other readers and later reads see its prefix."
    )
    error: str | None
    error_code: str | None
    request_id: str | None
    created_at: datetime
    not_before: datetime | None = Field(
        description="A `scheduled` run (waiting for a deploy window) starts then."
    )
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class RunList(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


def run_out(run: Any, result: dict[str, Any] | None = None) -> RunOut:
    """The API's view of a run; `result` defaults to the stored one without secrets."""
    from_storage = {k: v for k, v in (run.result or {}).items() if not k.startswith("_")}
    return RunOut.model_validate(
        {
            **{name: getattr(run, name) for name in RunOut.model_fields if hasattr(run, name)},
            "steps": [StepOut.model_validate(step) for step in run.steps],
            "events_url": f"/api/v1/runs/{run.id}/events",
            "result": result if result is not None else (from_storage if run.result else None),
        }
    )


class StreamTicket(BaseModel):
    ticket: str = Field(description="Put in the events URL as `?ticket=`; never a key.")
    expires_in: int = Field(description="Seconds during which it can open connections.")
    events_url: str = Field(description="The run's events URL with the ticket in it.")
