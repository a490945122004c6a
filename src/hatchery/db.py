import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import structlog
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi import Depends, Request
from sqlalchemy import DateTime, Enum, MetaData, func, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from alembic import command

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"

log = structlog.get_logger("hatchery.db")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


def str_enum(enum: type[StrEnum]) -> Enum:
    """A VARCHAR column that reads back as the enum's members."""
    return Enum(enum, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])


class UUIDPrimaryKey:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


def utcnow() -> datetime:
    return datetime.now(UTC)


class CreatedAt:
    # Set by Python, not now(): rows made in one transaction still sort in creation order.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())


def create_engine(database_url: str, **kwargs: object) -> AsyncEngine:
    return create_async_engine(
        database_url, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs
    )


def create_sessionmaker(
    engine: AsyncEngine, jobs: object = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions that carry the process's job queue (`jobs`), for what a transaction
    enqueues once it commits (a run's job)."""
    return async_sessionmaker(engine, expire_on_commit=False, info={JOBS: jobs})


JOBS = "jobs"


@asynccontextmanager
async def connection(url: str, **options: Any) -> AsyncIterator[AsyncConnection]:
    """One connection to a database other than the control one (a project's, the server's
    maintenance one), closed on leaving: no pool is kept for it."""
    engine = create_async_engine(url, poolclass=NullPool, **options)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


# Connection failure (class 08), and a server shutting down or starting (57P01-57P03).
UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def unavailable(exc: BaseException) -> bool:
    """Whether an error means the database could not be reached (rather than refused)."""
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        return exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATES)
    return isinstance(exc, ConnectionError | TimeoutError)


AfterCommit = Callable[[], Awaitable[object]]


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once the session's transaction has committed (enqueueing a job,
    publishing an event): never for work that was rolled back."""
    session.info.setdefault("after_commit", []).append(callback)


@asynccontextmanager
async def transaction(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """The one unit of work, and the only place that commits: commit when the block ends,
    then run the after-commit callbacks; roll back and drop them if it raises."""
    try:
        yield session
    except BaseException:
        session.info.pop("after_commit", None)
        # A rollback on a lost connection fails too: the server has already undone the
        # work, and the error worth raising is the first one.
        with contextlib.suppress(Exception):
            await session.rollback()
        raise
    await session.commit()
    callbacks: list[AfterCommit] = session.info.pop("after_commit", [])
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The commit stands; the reaper re-enqueues runs whose job never arrived.
            log.exception("after_commit_failed")


async def sessionmaker_of(request: Request) -> async_sessionmaker[AsyncSession]:
    """The api process's sessionmaker (its lifespan state's); tests override this."""
    found: async_sessionmaker[AsyncSession] = request.state.sessionmaker
    return found


async def get_session(
    sessionmaker: Annotated[async_sessionmaker[AsyncSession], Depends(sessionmaker_of)],
) -> AsyncIterator[AsyncSession]:
    """The request owns the transaction: commit when the route returns, roll back if it raises."""
    async with sessionmaker() as session, transaction(session):
        yield session


# scope="function" commits before the response is sent, so a 2xx always means "committed".
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def alembic_config(database_url: str) -> Config:
    ini = ALEMBIC_INI if ALEMBIC_INI.exists() else Path("alembic.ini")
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "alembic"))
    config.attributes["database_url"] = database_url
    return config


def upgrade_control_db(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade_control_db(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def control_head(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


async def current_control_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT version_num FROM alembic_version"))
        return result.scalar_one_or_none()
