"""The run engine, in process: small inline plans executed on the test's rolled-back
session, events read back from the real Redis stream."""

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchery import db, queue
from hatchery.config import Settings
from hatchery.events import stream
from hatchery.projects.models import Project, ProjectStatus
from hatchery.runs import reaper, repository, service
from hatchery.runs.executor import Executor, Plan, StepContext
from hatchery.runs.models import Run, RunKind, RunStatus, Step, StepStatus


@pytest.fixture
def quiet(settings: Settings) -> Settings:
    # No heartbeat while a test runs: the test's sessions share one connection.
    return settings.model_copy(update={"run_heartbeat_seconds": 3600})


async def new_run(
    session: AsyncSession, plan: Plan, kind: RunKind = RunKind.upgrade, **fields: Any
) -> Run:
    async with db.transaction(session):
        project = Project(
            slug=f"engine-{uuid.uuid4().hex[:6]}", name="engine", template="fastapi-service",
            status=ProjectStatus.active, repository_url="file:///nonexistent",
            repository_path="/nonexistent",
        )  # fmt: skip
        session.add(project)
        await session.flush()
        run = Run(
            project_id=project.id, kind=kind, params={},
            steps=[Step(name=name, position=i) for i, name in enumerate(plan.step_names)],
            **fields,
        )  # fmt: skip
        session.add(run)
    return run


def executor(
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    settings: Settings,
    plan: Plan,
    stopping: Callable[[], bool] = lambda: False,
) -> Executor:
    return Executor(sessionmaker, jobs, settings, lambda run: plan, stopping)


async def events(jobs: queue.Queue, run: Run) -> list[tuple[str, str | None]]:
    return [(e.type, json.loads(e.data)["step"]) for e in await stream.replay(jobs, run.id, "0-0")]


async def reloaded(session: AsyncSession, run: Run) -> Run:
    found = await repository.get(session, run.id, for_update=True)
    assert found is not None
    return found


def statuses(run: Run) -> list[str]:
    return [s.status.value for s in run.steps]


async def succeed(context: StepContext) -> dict[str, Any]:
    return {"step": context.step}


async def test_a_run_executes_each_step_in_order_and_announces_each_transition(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    plan = Plan(steps=[("one", succeed), ("two", succeed)])
    run = await new_run(session, plan)
    await executor(sessionmaker, jobs, quiet, plan).execute(run.id)
    done = await reloaded(session, run)
    assert done.status == RunStatus.succeeded and done.finished_at is not None
    assert statuses(done) == ["succeeded", "succeeded"]
    assert [s.output for s in done.steps] == [{"step": "one"}, {"step": "two"}]
    assert await events(jobs, run) == [
        ("step.started", "one"), ("step.succeeded", "one"),
        ("step.started", "two"), ("step.succeeded", "two"),
        ("run.succeeded", None),
    ]  # fmt: skip


async def test_a_failing_step_fails_the_run_rolls_back_its_writes_and_skips_the_rest(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    reacted: list[str] = []

    async def breaks(context: StepContext) -> dict[str, Any]:
        context.run.result = {"half": "written"}  # rolled back with the step
        raise RuntimeError("the disk is full")

    async def on_failure(session: AsyncSession, run: Run, error: str) -> None:
        reacted.append(error)

    steps = [("one", succeed), ("two", breaks), ("three", succeed)]
    plan = Plan(steps=steps, on_failure=on_failure)
    run = await new_run(session, plan)
    await executor(sessionmaker, jobs, quiet, plan).execute(run.id)
    done = await reloaded(session, run)
    assert (done.status, done.error_code) == (RunStatus.failed, "step_failed")
    assert done.error == "two: the disk is full" and done.result is None
    assert statuses(done) == ["succeeded", "failed", "pending"]
    assert done.steps[1].error == "the disk is full" and "RuntimeError" in done.steps[1].error_trace
    assert reacted == ["two: the disk is full"]
    assert (await events(jobs, run))[-2:] == [("step.failed", "two"), ("run.failed", None)]


async def test_a_cancel_asked_during_a_step_stops_the_run_before_the_next(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    async def asks_to_cancel(context: StepContext) -> None:
        async with context.sessionmaker() as other, db.transaction(other):
            await other.execute(
                update(Run).where(Run.id == context.run.id).values(cancel_requested=True)
            )

    plan = Plan(steps=[("one", asks_to_cancel), ("two", succeed)])
    run = await new_run(session, plan)
    await executor(sessionmaker, jobs, quiet, plan).execute(run.id)
    done = await reloaded(session, run)
    assert (done.status, done.error_code) == (RunStatus.cancelled, "cancelled")
    assert statuses(done) == ["succeeded", "pending"]
    assert (await events(jobs, run))[-1] == ("run.cancelled", None)


async def test_a_resumable_plan_skips_the_steps_an_earlier_run_completed(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    ran: list[str] = []

    async def counted(context: StepContext) -> None:
        ran.append(context.step)

    plan = Plan(steps=[("one", counted), ("two", counted)], resumable=True)
    first = await new_run(session, plan, RunKind.initialize)
    async with db.transaction(session):
        earlier = await reloaded(session, first)
        earlier.status, earlier.steps[0].status = RunStatus.failed, StepStatus.succeeded
        retry = Run(
            project_id=first.project_id, kind=RunKind.initialize, params={}, attempt=2,
            steps=[Step(name=n, position=i) for i, n in enumerate(plan.step_names)],
        )  # fmt: skip
        session.add(retry)
    await executor(sessionmaker, jobs, quiet, plan).execute(retry.id)
    done = await reloaded(session, retry)
    assert done.status == RunStatus.succeeded and ran == ["two"]
    assert statuses(done) == ["skipped", "succeeded"]
    assert done.steps[0].output == {"done_in_run": str(first.id)}


async def test_a_run_is_executed_once_however_often_its_job_arrives(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    ran: list[str] = []

    async def counted(context: StepContext) -> None:
        ran.append(context.step)

    plan = Plan(steps=[("one", counted)])
    run = await new_run(session, plan)
    engine = executor(sessionmaker, jobs, quiet, plan)
    await engine.execute(run.id)
    await engine.execute(run.id)
    assert ran == ["one"]


async def test_a_run_cut_short_by_shutdown_goes_back_to_the_queue_with_its_step_pending(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    started = asyncio.Event()

    async def slow(context: StepContext) -> None:
        started.set()
        await asyncio.sleep(60)

    plan = Plan(steps=[("one", succeed), ("two", slow)], resumable=True)
    run = await new_run(session, plan, RunKind.initialize)
    task = asyncio.create_task(
        executor(sessionmaker, jobs, quiet, plan, stopping=lambda: True).execute(run.id)
    )
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    back = await reloaded(session, run)
    assert back.status == RunStatus.queued and back.started_at is None
    assert statuses(back) == ["succeeded", "pending"]


async def test_the_reaper_fails_a_silent_run_as_worker_lost_and_leaves_a_working_one(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    plan = Plan(steps=[("one", succeed), ("two", succeed)])
    long_ago = db.utcnow() - timedelta(hours=1)
    silent = await new_run(session, plan, status=RunStatus.running, heartbeat_at=long_ago)
    alive = await new_run(session, plan, status=RunStatus.running, heartbeat_at=long_ago)
    async with db.transaction(session):
        (await reloaded(session, silent)).steps[1].status = StepStatus.running
    await jobs.set(f"hatchery:run:{alive.id}:alive", "1", ex=60)  # it still beats in Redis

    reaped = await reaper.reap(sessionmaker, jobs, jobs, quiet, lambda run: plan)
    assert reaped == 1
    lost = await reloaded(session, silent)
    assert (lost.status, lost.error_code) == (RunStatus.failed, "worker_lost")
    assert statuses(lost) == ["pending", "failed"] and lost.steps[1].error.startswith("worker_lost")
    assert (await events(jobs, silent))[-2:] == [("step.failed", "two"), ("run.failed", None)]
    assert (await reloaded(session, alive)).status == RunStatus.running


async def test_a_run_that_may_not_start_yet_waits_scheduled_with_a_job_for_then(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    later = db.utcnow() + timedelta(hours=3)

    async def window(session: AsyncSession, run: Run) -> datetime | None:
        return later

    plan = Plan(steps=[("one", succeed)], not_before=window)
    run = await new_run(session, plan)
    await executor(sessionmaker, jobs, quiet, plan).execute(run.id)
    waiting = await reloaded(session, run)
    assert waiting.status == RunStatus.scheduled and waiting.not_before == later
    assert waiting.started_at is None and statuses(waiting) == ["pending"]
    assert await events(jobs, run) == [("run.scheduled", None)]
    score = await jobs.zscore(queue.QUEUE_NAME, f"run:{run.id}:{later.timestamp():.0f}")
    assert score == pytest.approx(later.timestamp() * 1000, abs=1)

    # Cancelled while it waits: the job, when it comes, finds nothing to do.
    async with db.transaction(session):
        await service.cancel_run(session, jobs, run.id)
    await executor(sessionmaker, jobs, quiet, plan).execute(run.id)
    assert (await reloaded(session, run)).status == RunStatus.cancelled


async def test_a_scheduled_run_starts_once_its_time_has_come(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    jobs: queue.Queue,
    quiet: Settings,
) -> None:
    plan = Plan(steps=[("one", succeed)])
    run = await new_run(
        session, plan, status=RunStatus.scheduled, not_before=db.utcnow() + timedelta(hours=1)
    )
    await executor(sessionmaker, jobs, quiet, plan).execute(run.id)  # early: waits again
    assert (await reloaded(session, run)).status == RunStatus.scheduled
    async with db.transaction(session):
        await session.execute(update(Run).where(Run.id == run.id).values(not_before=db.utcnow()))
    await executor(sessionmaker, jobs, quiet, plan).execute(run.id)
    assert (await reloaded(session, run)).status == RunStatus.succeeded
