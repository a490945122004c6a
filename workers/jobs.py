"""Job functions: a few lines each, taking ids, safe to run twice."""

import time
import uuid
from typing import Any

from hatchery.migrations import steps as migrations
from hatchery.projects import adoption, deletion, initialization
from hatchery.runs import reaper
from hatchery.runs.executor import Executor, Plan
from hatchery.runs.models import Run, RunKind

PLANS: dict[tuple[RunKind, str | None], Plan] = {
    (RunKind.initialize, None): initialization.PLAN,
    (RunKind.initialize, "adopt"): adoption.PLAN,
    (RunKind.upgrade, None): migrations.UPGRADE,
    (RunKind.downgrade, None): migrations.DOWNGRADE,
    (RunKind.restore, None): migrations.RESTORE,
    (RunKind.delete, None): deletion.PLAN,
    (RunKind.delete, "forget"): adoption.FORGET,
}


def plan_for(run: Run) -> Plan:
    return PLANS[(run.kind, run.params.get("variant"))]


async def execute_run(ctx: dict[str, Any], run_id: str) -> None:
    executor = Executor(
        ctx["sessionmaker"], ctx["redis"], ctx["settings"], plan_for, ctx["stopping"].is_set
    )
    await executor.execute(uuid.UUID(run_id))


async def reap_runs(ctx: dict[str, Any]) -> int:
    return await reaper.reap(
        ctx["sessionmaker"], ctx["redis"], ctx["redis"], ctx["settings"], plan_for
    )


async def ping(ctx: dict[str, Any], enqueued_at: float | None = None) -> dict[str, float | None]:
    """A trivial job that proves the api → queue → worker path and measures pickup."""
    started = time.time()
    return {"enqueued_at": enqueued_at, "started_at": started}
