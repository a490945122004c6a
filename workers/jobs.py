"""Job functions: a few lines each, taking ids, safe to run twice."""

import time
import uuid
from typing import Any

from hatchery.migrations import steps as migrations
from hatchery.projects import deletion, initialization
from hatchery.runs import reaper
from hatchery.runs.executor import Executor, Plans
from hatchery.runs.models import RunKind

PLANS: Plans = {
    RunKind.initialize: initialization.PLAN,
    RunKind.upgrade: migrations.UPGRADE,
    RunKind.downgrade: migrations.DOWNGRADE,
    RunKind.restore: migrations.RESTORE,
    RunKind.delete: deletion.PLAN,
}


async def execute_run(ctx: dict[str, Any], run_id: str) -> None:
    executor = Executor(ctx["sessionmaker"], ctx["redis"], ctx["settings"], PLANS)
    await executor.execute(uuid.UUID(run_id))


async def reap_runs(ctx: dict[str, Any]) -> int:
    return await reaper.reap(
        ctx["sessionmaker"], ctx["redis"], ctx["redis"], ctx["settings"], PLANS
    )


async def ping(ctx: dict[str, Any], enqueued_at: float | None = None) -> dict[str, float | None]:
    """A trivial job that proves the api → queue → worker path and measures pickup."""
    started = time.time()
    return {"enqueued_at": enqueued_at, "started_at": started}
