"""Job functions: a few lines each, taking ids, safe to run twice."""

import time
import uuid
from typing import Any

from hatchery.environments import service as environments_service
from hatchery.migrations import service as migrations_service
from hatchery.runs import reaper
from hatchery.runs.executor import Executor
from hatchery.runs.plans import of_run


async def execute_run(ctx: dict[str, Any], run_id: str) -> None:
    executor = Executor(
        ctx["sessionmaker"], ctx["redis"], ctx["settings"], of_run, ctx["stopping"].is_set
    )
    await executor.execute(uuid.UUID(run_id))


async def inspect_history(ctx: dict[str, Any], project_id: str, commit: str) -> dict[str, Any]:
    async with ctx["sessionmaker"]() as session:
        return await migrations_service.inspect_history(
            session, ctx["redis"], ctx["settings"], uuid.UUID(project_id), commit
        )


async def dry_run(
    ctx: dict[str, Any], project_id: str, environment: str, commit: str, target: str
) -> dict[str, Any]:
    async with ctx["sessionmaker"]() as session:
        return await migrations_service.plan_dry_run(
            session, ctx["redis"], ctx["settings"], uuid.UUID(project_id), environment, commit,
            target,
        )  # fmt: skip


async def start_scheduled_refreshes(ctx: dict[str, Any]) -> int:
    return await environments_service.start_scheduled(ctx["sessionmaker"])


async def reap_runs(ctx: dict[str, Any]) -> int:
    return await reaper.reap(
        ctx["sessionmaker"], ctx["redis"], ctx["redis"], ctx["settings"], of_run
    )


async def ping(ctx: dict[str, Any], enqueued_at: float | None = None) -> dict[str, float | None]:
    """A trivial job that proves the api → queue → worker path and measures pickup."""
    started = time.time()
    return {"enqueued_at": enqueued_at, "started_at": started}
