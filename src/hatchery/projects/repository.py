import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from hatchery.keys.models import ApiKey
from hatchery.projects.models import Environment, Project, ProjectStatus


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


async def revoke_project_keys(session: AsyncSession, project_id: uuid.UUID, at: datetime) -> int:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=at)
        .returning(ApiKey.id)
    )
    return len(result.all())
