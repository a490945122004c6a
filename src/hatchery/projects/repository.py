import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.runs.models import Run


async def load_project(session: AsyncSession, run: Run) -> Project:
    """The project a run is about (it exists: a run's project is never deleted under it)."""
    project = await get(session, run.project_id)
    assert project is not None
    return project


async def get(session: AsyncSession, project_id: uuid.UUID) -> Project | None:
    return await session.scalar(
        select(Project).where(Project.id == project_id).options(selectinload(Project.environments))
    )


async def get_environment(
    session: AsyncSession, project_id: uuid.UUID, name: str
) -> Environment | None:
    return await session.scalar(
        select(Environment)
        .where(Environment.project_id == project_id, Environment.name == name)
        .options(joinedload(Environment.project))
    )


async def list_page(
    session: AsyncSession,
    *,
    status: ProjectStatus | None,
    slug: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Project]:
    query = (
        select(Project)
        .options(selectinload(Project.environments))
        .order_by(Project.created_at.desc(), Project.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(Project.status == status)
    else:
        query = query.where(Project.status != ProjectStatus.deleted)
    if slug is not None:
        query = query.where(Project.slug == slug)
    if after is not None:
        query = query.where(tuple_(Project.created_at, Project.id) < tuple_(*after))
    return (await session.scalars(query)).all()
