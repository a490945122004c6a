"""Nothing stays `running` forever: runs whose worker stopped beating are failed with
`worker_lost`, and queued runs whose job never reached the queue (or scheduled ones whose
job never started them) are enqueued again."""

from datetime import timedelta

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchery import db, queue
from hatchery.config import Settings
from hatchery.runs import jobs as run_jobs
from hatchery.runs import repository
from hatchery.runs.executor import Plans, alive_key, fail
from hatchery.runs.models import StepStatus

log = structlog.get_logger("hatchery.reaper")


async def reap(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    jobs: queue.Queue,
    settings: Settings,
    plans: Plans,
) -> int:
    stale_after = timedelta(seconds=settings.run_stale_after_seconds)
    reaped = 0
    while True:
        async with sessionmaker() as session, db.transaction(session):
            run = await repository.next_stale_running(session, stale_after)
            if run is None:
                break
            plan = plans(run)
            alive = bool(await redis.exists(alive_key(run.id)))
            if alive or (
                plan.still_working is not None and await plan.still_working(session, run, settings)
            ):
                # Its worker still beats in Redis (the control database was away), or its
                # migrator still holds the lock: failing the run now would lie, and could
                # let a migration commit under a run recorded as failed.
                run.heartbeat_at = db.utcnow()
                log.warning("run_silent_but_working", run_id=str(run.id))
                continue
            running = next((s for s in run.steps if s.status == StepStatus.running), None)
            error = f"worker_lost: no heartbeat for {settings.run_stale_after_seconds:g} s"
            await fail(
                session, redis, settings, run, plan, error, step=running, error_code="worker_lost"
            )
            log.warning("run_reaped", run_id=str(run.id), step=running.name if running else None)
            reaped += 1
    async with sessionmaker() as session:
        for run_id in await repository.stale_queued(session, stale_after):
            await run_jobs.enqueue(jobs, run_id)
        for run in await repository.due_scheduled(session, stale_after):
            await run_jobs.enqueue(jobs, run.id, run.not_before)
    return reaped
