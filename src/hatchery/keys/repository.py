import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.keys.models import ApiKey

LAST_USED_RESOLUTION = timedelta(minutes=1)


async def get(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def get_by_prefix(session: AsyncSession, prefix: str) -> ApiKey | None:
    return await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


async def list_all(session: AsyncSession) -> Sequence[ApiKey]:
    return (await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))).all()


async def touch(session: AsyncSession, key: ApiKey) -> None:
    """Record use, at most once a minute per key, so reads do not turn into writes."""
    await session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            or_(
                ApiKey.last_used_at.is_(None),
                ApiKey.last_used_at < func.now() - LAST_USED_RESOLUTION,
            ),
        )
        .values(last_used_at=func.now())
        .execution_options(synchronize_session=False)
    )


async def revoke_project_keys(session: AsyncSession, project_id: uuid.UUID, at: datetime) -> int:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=at)
        .returning(ApiKey.id)
    )
    return len(result.all())
