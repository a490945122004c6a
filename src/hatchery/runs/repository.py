import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from hatchery.pagination import Position
from hatchery.runs.models import Run, RunKind, RunStatus, Step, StepStatus


async def get(session: AsyncSession, run_id: uuid.UUID, *, for_update: bool = False) -> Run | None:
    query = select(Run).where(Run.id == run_id).options(selectinload(Run.steps))
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


async def get_by_idempotency_key(
    session: AsyncSession, project_id: uuid.UUID, key: str
) -> Run | None:
    return await session.scalar(
        select(Run)
        .where(Run.project_id == project_id, Run.idempotency_key == key)
        .options(selectinload(Run.steps))
    )


async def get_creation(session: AsyncSession, idempotency_key: str) -> Run | None:
    """The initialize run a project creation with this Idempotency-Key made, if any."""
    return await session.scalar(
        select(Run)
        .where(Run.kind == RunKind.initialize, Run.idempotency_key == idempotency_key)
        .options(selectinload(Run.steps))
        .limit(1)
    )


async def list_for_project(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: Position | None
) -> Sequence[Run]:
    query = (
        select(Run)
        .where(Run.project_id == project_id)
        .options(selectinload(Run.steps))
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(Run.created_at, Run.id) < tuple_(*after))
    return (await session.scalars(query)).all()


async def latest(
    session: AsyncSession, project_id: uuid.UUID, kind: RunKind | None = None
) -> Run | None:
    query = (
        select(Run)
        .where(Run.project_id == project_id)
        .options(selectinload(Run.steps))
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(1)
    )
    if kind is not None:
        query = query.where(Run.kind == kind)
    return await session.scalar(query)


async def active(session: AsyncSession, project_id: uuid.UUID) -> Run | None:
    return await session.scalar(
        select(Run)
        .where(
            Run.project_id == project_id,
            Run.status.in_([RunStatus.scheduled, RunStatus.queued, RunStatus.running]),
        )
        .limit(1)
    )


async def claim(session: AsyncSession, run_id: uuid.UUID) -> bool:
    """Take a queued (or scheduled) run for this worker; False when another execution
    already did. A scheduled run that may not start yet is the executor's to put back."""
    claimed = await session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_([RunStatus.queued, RunStatus.scheduled]))
        .values(status=RunStatus.running, started_at=func.now(), heartbeat_at=func.now())
        .returning(Run.id)
    )
    return claimed.first() is not None


async def heartbeat(session: AsyncSession, run_id: uuid.UUID) -> bool:
    beat = await session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running)
        .values(heartbeat_at=func.now())
        .returning(Run.id)
    )
    return beat.first() is not None


async def succeeded_steps(
    session: AsyncSession, project_id: uuid.UUID, kind: RunKind, before: uuid.UUID
) -> dict[str, Step]:
    """Steps that earlier runs of this kind completed, by name: a retry skips them."""
    steps = await session.scalars(
        select(Step)
        .join(Run)
        .where(
            Run.project_id == project_id,
            Run.kind == kind,
            Run.id != before,
            Step.status == StepStatus.succeeded,
        )
    )
    return {step.name: step for step in steps}


async def next_stale_running(session: AsyncSession, older_than: timedelta) -> Run | None:
    return await session.scalar(
        select(Run)
        .where(Run.status == RunStatus.running, Run.heartbeat_at < func.now() - older_than)
        .options(selectinload(Run.steps))
        .limit(1)
        .with_for_update(skip_locked=True)
    )


async def stale_queued(session: AsyncSession, older_than: timedelta) -> Sequence[uuid.UUID]:
    return (
        await session.scalars(
            select(Run.id).where(
                Run.status == RunStatus.queued,
                # Since it was queued, or handed back by a stopping worker.
                func.coalesce(Run.heartbeat_at, Run.created_at) < func.now() - older_than,
            )
        )
    ).all()


async def due_scheduled(session: AsyncSession, late_by: timedelta) -> Sequence[Run]:
    """Scheduled runs that should have started `late_by` ago: their job was lost."""
    return (
        await session.scalars(
            select(Run).where(
                Run.status == RunStatus.scheduled, Run.not_before < func.now() - late_by
            )
        )
    ).all()
