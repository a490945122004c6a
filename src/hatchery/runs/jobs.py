"""A run's job in the queue: how a run, once committed, reaches a worker."""

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db, queue

EXECUTE_JOB = "execute_run"


def jobs_of(session: AsyncSession) -> queue.Queue:
    """The job queue the session's maker was given (`db.create_sessionmaker`)."""
    jobs: queue.Queue | None = session.info.get(db.JOBS)
    if jobs is None:
        raise RuntimeError("this session enqueues runs but its sessionmaker has no job queue")
    return jobs


async def enqueue(jobs: queue.Queue, run_id: uuid.UUID, not_before: datetime | None = None) -> None:
    """The run's job; a scheduled run's starts at `not_before`. The job id says which:
    arq refuses a second copy of a job while the first is queued."""
    job_id = f"run:{run_id}" + (f":{not_before.timestamp():.0f}" if not_before else "")
    await queue.enqueue(jobs, EXECUTE_JOB, str(run_id), job_id=job_id, not_before=not_before)
