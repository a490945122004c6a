"""Executes a run step by step.

Every step is written to Postgres when it starts, succeeds or fails, and announced on
the run's event stream; progress and log lines go to the stream only. A run is claimed
from `queued` exactly once, so a job that arq runs twice does nothing the second time;
a heartbeat lets the reaper fail runs whose worker died.
"""

import asyncio
import contextlib
import functools
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import structlog
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchery import db, metrics, redaction
from hatchery.config import Settings
from hatchery.events import stream
from hatchery.failures import Failure
from hatchery.migrator import execution
from hatchery.runs import jobs as run_jobs
from hatchery.runs import repository
from hatchery.runs.models import Run, RunStatus, Step, StepStatus

log = structlog.get_logger("hatchery.runs")
T = TypeVar("T")

TRACE_LIMIT = 4000


class StepFailed(Failure):
    """The root of what a step raises when it fails for a reason it can name: the message
    becomes the step's error, `details` (what it knows beyond that) its output."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details


class StepOutput(BaseModel):
    """What a step returns for the steps after it, read by type (`context.output(...)`);
    stored as the step's output (only the fields it set)."""

    step: ClassVar[str]  # the name of the step that produces it


OutputT = TypeVar("OutputT", bound=StepOutput)
ParamsT = TypeVar("ParamsT", bound=BaseModel)


@dataclass
class StepContext:
    session: AsyncSession
    run: Run
    step: str
    settings: Settings
    redis: Redis
    # For what must be written even when the step fails (the step's own session is
    # rolled back then).
    sessionmaker: async_sessionmaker[AsyncSession]

    def output(self, model: type[OutputT]) -> OutputT | None:
        """What an earlier step of this run produced; None when it has produced nothing (yet)
        or this run skipped it (an earlier run did it)."""
        step = next(s for s in self.run.steps if s.name == model.step)
        if step.status == StepStatus.skipped or not step.output:
            return None
        return model.model_validate(step.output or {})

    def params(self, model: type[ParamsT]) -> ParamsT:
        """The run's parameters, as its plan declares them."""
        return model.model_validate(self.run.params)

    async def progress(self, percent: float, message: str) -> None:
        await stream.publish(
            self.redis, self.run.id, "step.progress", self.step, percent=round(percent, 1),
            message=message,
        )  # fmt: skip

    async def log(self, message: str) -> None:
        await stream.publish(self.redis, self.run.id, "step.log", self.step, message=message)


StepFn = Callable[[StepContext], Awaitable[StepOutput | dict[str, Any] | None]]
FailureHook = Callable[[AsyncSession, Run, str], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    steps: Sequence[tuple[str, StepFn]]
    # What a run of the plan is given: checked when the run is created.
    params: type[BaseModel] | None = None
    # A new run of the same kind skips the steps that an earlier one completed.
    resumable: bool = False
    # When a claimed run may start, if not now (a deploy window that is closed): it goes
    # back to `scheduled` until then. Called in the transaction that claims the run.
    not_before: Callable[[AsyncSession, Run], Awaitable[datetime | None]] | None = None
    # Called in the transaction that claims the run.
    on_start: Callable[[AsyncSession, Run], Awaitable[None]] | None = None
    # Held around all the steps (a migration lock); may wait, and may fail the run.
    exclusive: Callable[[StepContext], AbstractAsyncContextManager[None]] | None = None
    # Called in the transaction that marks the run succeeded (every step done).
    on_success: Callable[[AsyncSession, Run], Awaitable[None]] | None = None
    # Called in the transaction that marks the run failed or cancelled.
    on_failure: FailureHook | None = None
    # Whether a run whose heartbeat stopped is nonetheless at work (its migrator still
    # holds the database's lock): the reaper leaves such a run alone.
    still_working: Callable[[AsyncSession, Run, Settings], Awaitable[bool]] | None = None

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self.steps]


# Which plan a run follows (by its kind, and for some kinds a variant in its params).
Plans = Callable[[Run], Plan]


@dataclass
class Executor:
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    settings: Settings
    plans: Plans
    # True once the worker has been asked to stop (SIGTERM).
    stopping: Callable[[], bool] = lambda: False
    _lost: set[uuid.UUID] = field(default_factory=set)

    async def execute(self, run_id: uuid.UUID) -> None:
        async with self.sessionmaker() as session, db.transaction(session):
            claimed = await repository.claim(session, run_id)
            run = await repository.get(session, run_id) if claimed else None
            if run is None:
                log.info("run_not_claimed", run_id=str(run_id))
                return
            plan = self.plans(run)
            later = await _not_yet(session, run, plan)
            if later is not None:
                _reschedule(session, self.redis, run, later)
                return
            if plan.resumable:
                await self._skip_done_steps(session, run)
            if plan.on_start is not None:
                await plan.on_start(session, run)
        structlog.contextvars.bind_contextvars(run_id=str(run_id), request_id=run.request_id)
        log.info("run_started", kind=run.kind)
        try:
            async with self._heartbeat(run_id):
                if plan.exclusive is None:
                    await self._run_steps(run_id, plan)
                else:
                    await self._run_exclusive(run_id, plan, plan.exclusive)
        except asyncio.CancelledError:
            if self.stopping():
                # The worker's grace period ran out mid-step: hand the run back, shielded
                # from the cancellation, and let arq run the job again elsewhere.
                await asyncio.shield(self._abandon(run_id, plan))
            raise
        finally:
            await stream.expire(self.redis, run_id, self.settings.event_retention_seconds)
            await execution.end(self.settings, str(run_id))
            structlog.contextvars.unbind_contextvars("run_id", "request_id")

    async def _abandon(self, run_id: uuid.UUID, plan: Plan) -> None:
        """Put a run cut short by shutdown back in the queue: the step under way (every
        step, unless the plan resumes) to be done again by whichever worker claims it."""
        async with self.sessionmaker() as session, db.transaction(session):
            run = await repository.get(session, run_id, for_update=True)
            if run is None or run.status != RunStatus.running:
                return
            abandoned = [s.name for s in run.steps if s.status == StepStatus.running]
            for step in run.steps:
                if step.status == StepStatus.running or not plan.resumable:
                    step.status, step.started_at, step.finished_at = StepStatus.pending, None, None
            # arq gives the job to the next worker; the reaper waits as for a new run.
            run.status, run.started_at, run.heartbeat_at = RunStatus.queued, None, db.utcnow()
        message = f"worker stopping: {', '.join(abandoned) or 'the run'} will run again"
        await stream.publish(self.redis, run_id, "step.log", None, message=message)
        log.warning("run_abandoned", steps=abandoned)

    async def _run_exclusive(
        self,
        run_id: uuid.UUID,
        plan: Plan,
        exclusive: Callable[[StepContext], AbstractAsyncContextManager[None]],
    ) -> None:
        async with self.sessionmaker() as session:
            run = await repository.get(session, run_id)
            assert run is not None
            context = StepContext(session, run, "", self.settings, self.redis, self.sessionmaker)
            try:
                async with exclusive(context):
                    await session.close()
                    await self._run_steps(run_id, plan)
                    return
            except Exception as exc:
                error = str(exc)
                log.warning("run_exclusive_failed", error=error)
        async with self.sessionmaker() as session, db.transaction(session):
            run = await repository.get(session, run_id, for_update=True)
            assert run is not None
            if run.status == RunStatus.running:
                await fail(session, self.redis, self.settings, run, plan, error)

    async def _skip_done_steps(self, session: AsyncSession, run: Run) -> None:
        done = await repository.succeeded_steps(session, run.project_id, run.kind, run.id)
        for step in run.steps:
            if step.name in done:
                step.status = StepStatus.skipped
                step.output = {"done_in_run": str(done[step.name].run_id)}

    async def _run_steps(self, run_id: uuid.UUID, plan: Plan) -> None:
        for name, function in plan.steps:
            verdict = await self._persist(functools.partial(self._begin_step, run_id, plan, name))
            if verdict == "stop":
                return
            if verdict == "done":
                continue
            await stream.publish(self.redis, run_id, "step.started", name)
            if not await self._run_step(run_id, plan, name, function):
                return
        run = await self._persist(lambda: self._succeed(run_id, plan))
        metrics.run_finished(run.kind, run.status, run.seconds)
        await stream.publish(self.redis, run_id, "run.succeeded", status=RunStatus.succeeded)
        log.info("run_succeeded", kind=run.kind)

    async def _begin_step(self, run_id: uuid.UUID, plan: Plan, name: str) -> str:
        """`start` the step, or say it is `done` already, or that the run must `stop`
        (taken away, or cancelled: then recorded so)."""
        async with self.sessionmaker() as session, db.transaction(session):
            run = await repository.get(session, run_id, for_update=True)
            assert run is not None
            if run.status != RunStatus.running or run_id in self._lost:
                log.warning("run_taken_away", status=run.status)
                return "stop"
            if run.cancel_requested:
                await fail(
                    session, self.redis, self.settings, run, plan, "cancelled",
                    status=RunStatus.cancelled,
                )  # fmt: skip
                return "stop"
            step = _step(run, name)
            if step.status in (StepStatus.succeeded, StepStatus.skipped):
                return "done"
            step.status, step.started_at, step.error = StepStatus.running, db.utcnow(), None
            return "start"

    async def _succeed(self, run_id: uuid.UUID, plan: Plan) -> Run:
        async with self.sessionmaker() as session, db.transaction(session):
            run = await repository.get(session, run_id, for_update=True)
            assert run is not None
            run.status, run.finished_at = RunStatus.succeeded, db.utcnow()
            if plan.on_success is not None:
                await plan.on_success(session, run)
            return run

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T:
        """`write`, tried again while the control database cannot be reached (a restart,
        a failover), for up to HATCHERY_CONTROL_DATABASE_WAIT_SECONDS: the worker is
        alive, and its run must not be given up as lost."""
        deadline = time.monotonic() + self.settings.control_database_wait_seconds
        delay = 0.2
        while True:
            try:
                return await write()
            except Exception as exc:
                if not db.unavailable(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("control_database_unavailable", retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run_step(self, run_id: uuid.UUID, plan: Plan, name: str, function: StepFn) -> bool:
        started = time.monotonic()
        async with self.sessionmaker() as session:
            run = await self._persist(functools.partial(_reload, session, run_id))
            context = StepContext(session, run, name, self.settings, self.redis, self.sessionmaker)
            try:
                async with db.transaction(session):
                    output = await function(context)
                    step = _step(run, name)
                    step.status, step.finished_at = StepStatus.succeeded, db.utcnow()
                    step.duration_ms = _ms_since(started)
                    if isinstance(output, StepOutput):
                        output = output.model_dump(mode="json", exclude_unset=True)
                    step.output = output or {}
            except Exception as exc:
                failed = functools.partial(self._fail_step, run_id, plan, name, started, exc)
                await self._persist(failed)
                return False
            metrics.STEP_SECONDS.labels(run.kind, name, "succeeded").observe(
                step.duration_ms / 1000
            )
        log.info("step_succeeded", step=name, duration_ms=step.duration_ms)
        await stream.publish(
            self.redis, run_id, "step.succeeded", name, duration_ms=step.duration_ms,
            output=step.output,
        )  # fmt: skip
        return True

    async def _fail_step(
        self, run_id: uuid.UUID, plan: Plan, name: str, started: float, exc: Exception
    ) -> None:
        # A step's error may quote a statement or a tool's output: never a secret.
        trace = redaction.redact("".join(traceback.format_exception(exc))[-TRACE_LIMIT:])
        message = redaction.redact(str(exc)) or type(exc).__name__
        log.warning("step_failed", step=name, error=message)
        async with self.sessionmaker() as session, db.transaction(session):
            failed = await repository.get(session, run_id, for_update=True)
            assert failed is not None
            step = _step(failed, name)
            # What a step knows of its failure beyond the message (a migration's
            # exception, statement and traceback tail), readable through the api.
            step.output = exc.details if isinstance(exc, StepFailed) else None
            await fail(
                session, self.redis, self.settings, failed, plan, f"{name}: {message}",
                step=step, step_error=message, trace=trace, started=started,
                error_code=_error_code(exc),
            )  # fmt: skip

    async def _beat_in_database(self, run_id: uuid.UUID) -> bool:
        async with self.sessionmaker() as session, db.transaction(session):
            return await repository.heartbeat(session, run_id)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, run_id: uuid.UUID) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.run_heartbeat_seconds)
                with contextlib.suppress(Exception):
                    # Also in Redis: while the control database is away, the reaper still
                    # sees that this worker is at work on the run. Bounded: a Redis that is
                    # away must not stop the beat in PostgreSQL.
                    await asyncio.wait_for(
                        self.redis.set(
                            alive_key(run_id), "1", ex=int(self.settings.run_stale_after_seconds)
                        ),
                        self.settings.run_heartbeat_seconds,
                    )
                try:
                    # Bounded too: a control database that is away must not hold up the
                    # next beat in Redis past the life of the last one.
                    alive = await asyncio.wait_for(
                        self._beat_in_database(run_id), self.settings.run_stale_after_seconds / 2
                    )
                except Exception:
                    log.exception("heartbeat_failed")
                    continue
                if not alive:
                    self._lost.add(run_id)
                    return

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._lost.discard(run_id)


async def fail(
    session: AsyncSession,
    redis: Redis,
    settings: Settings,
    run: Run,
    plan: Plan,
    error: str,
    *,
    status: RunStatus = RunStatus.failed,
    step: Step | None = None,
    step_error: str | None = None,
    trace: str | None = None,
    started: float | None = None,
    error_code: str | None = None,
) -> None:
    """Mark a run failed or cancelled (and the step it failed in), in the caller's
    transaction, and let its plan react; the events go out once that commits. The one
    way a run fails: for the executor, the reaper and a cut-short exclusive section."""
    now = db.utcnow()
    if step is not None:
        step.status, step.finished_at = StepStatus.failed, now
        step.error, step.error_trace = step_error or error, trace
        if started is not None:
            step.duration_ms = _ms_since(started)
            metrics.STEP_SECONDS.labels(run.kind, step.name, "failed").observe(
                step.duration_ms / 1000
            )
    run.status, run.finished_at, run.error = status, now, error
    run.error_code = error_code or ("cancelled" if status == RunStatus.cancelled else "step_failed")
    if plan.on_failure is not None:
        await plan.on_failure(session, run, error)

    async def announce() -> None:
        metrics.run_finished(run.kind, run.status, run.seconds)
        if step is not None:
            await stream.publish(redis, run.id, "step.failed", step.name, error=error)
        await stream.publish(
            redis, run.id, f"run.{status}", status=status, error=error, error_code=run.error_code
        )
        await stream.expire(redis, run.id, settings.event_retention_seconds)

    db.after_commit(session, announce)


async def _not_yet(session: AsyncSession, run: Run, plan: Plan) -> datetime | None:
    """When a run just claimed may start, if it may not now."""
    now = db.utcnow()
    later = run.not_before if run.not_before and run.not_before > now else None
    if later is None and plan.not_before is not None:
        later = await plan.not_before(session, run)
    return later


def _reschedule(session: AsyncSession, redis: Redis, run: Run, later: datetime) -> None:
    """Back to `scheduled` until `later`, with a job that starts it then."""
    run.status, run.not_before, run.started_at, run.heartbeat_at = (
        RunStatus.scheduled, later, None, None
    )  # fmt: skip
    jobs = run_jobs.jobs_of(session)

    async def announce() -> None:
        await run_jobs.enqueue(jobs, run.id, later)
        await stream.publish(
            redis, run.id, "run.scheduled", status=RunStatus.scheduled,
            not_before=later.isoformat(),
        )  # fmt: skip
        log.info("run_scheduled", run_id=str(run.id), not_before=later.isoformat())

    db.after_commit(session, announce)


async def _reload(session: AsyncSession, run_id: uuid.UUID) -> Run:
    """The run, in a session that may have just lost its connection (then tried again)."""
    await session.rollback()
    run = await repository.get(session, run_id)
    assert run is not None
    return run


def _error_code(exc: Exception) -> str | None:
    """What a step's failure says beyond `step_failed`: which server went away."""
    if db.unavailable(exc):
        return "control_database_unavailable"
    cause: BaseException | None = exc  # steps re-raise the child's failure in their words
    while cause is not None:
        if getattr(cause, "unreachable", False):
            return "database_unavailable"
        cause = cause.__cause__ or cause.__context__
    return None


def alive_key(run_id: uuid.UUID) -> str:
    return f"hatchery:run:{run_id}:alive"


def _step(run: Run, name: str) -> Step:
    return next(s for s in run.steps if s.name == name)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
