import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.migrations.models import Backup, Direction, MigrationRecord, Outcome


async def records(session: AsyncSession, environment_id: uuid.UUID) -> Sequence[MigrationRecord]:
    """The environment's migration history, oldest first."""
    return (
        await session.scalars(
            select(MigrationRecord)
            .where(MigrationRecord.environment_id == environment_id)
            .order_by(MigrationRecord.created_at, MigrationRecord.id)
        )
    ).all()


def applied(history: Sequence[MigrationRecord]) -> dict[str, MigrationRecord]:
    """Revisions whose latest successful record put them in the database, by revision. A
    restore brings back what was applied when its backup was taken (its `started_at`)."""
    state: dict[str, MigrationRecord] = {}
    for record in history:
        if record.outcome != Outcome.succeeded:
            continue
        if record.direction == Direction.restore:
            state = applied([r for r in history if r.created_at < record.started_at])
        elif record.direction == Direction.downgrade:
            state.pop(record.revision, None)
        else:
            state[record.revision] = record
    return state


async def succeeded_revisions(session: AsyncSession, environment_id: uuid.UUID) -> set[str]:
    """Every revision that has ever landed on the environment."""
    return set(
        (
            await session.scalars(
                select(MigrationRecord.revision).where(
                    MigrationRecord.environment_id == environment_id,
                    MigrationRecord.direction == Direction.upgrade,
                    MigrationRecord.outcome == Outcome.succeeded,
                )
            )
        ).all()
    )


async def backups(session: AsyncSession, environment_id: uuid.UUID) -> Sequence[Backup]:
    """The environment's backups, newest first."""
    return (
        await session.scalars(
            select(Backup)
            .where(Backup.environment_id == environment_id)
            .order_by(Backup.created_at.desc(), Backup.id.desc())
        )
    ).all()


async def get_backup(session: AsyncSession, backup_id: uuid.UUID) -> Backup | None:
    return await session.get(Backup, backup_id)
