"""Refreshes of an environment from another (masked), their masking rules and schedules."""

import uuid
from collections.abc import Callable

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchery import db
from hatchery.audit import service as audit
from hatchery.config import Settings
from hatchery.environments import masking
from hatchery.environments.params import RefreshParams
from hatchery.environments.schemas import (
    MaskedColumn,
    MaskingOut,
    MaskingRules,
    RefreshCreate,
    RefreshPlan,
    RefreshSchedule,
    RefreshScheduleOut,
)
from hatchery.errors import Conflict, FieldError, InvalidInput, NotFound, Unavailable
from hatchery.keys.models import ApiKey
from hatchery.migrations import repository as migrations_repository
from hatchery.migrations import windows
from hatchery.migrations.service import active_project, environment_named
from hatchery.projects import provisioning
from hatchery.projects import service as projects
from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.runs import service as runs
from hatchery.runs.models import Run, RunKind, RunTrigger
from hatchery.schema.catalog import Masking

log = structlog.get_logger("hatchery.environments")


def sensitive(settings: Settings) -> Callable[[str], bool]:
    """Whether a column is masked by default: the schema API flags it `sensitive`."""
    return Masking(tuple(settings.schema_sensitive_patterns), False).sensitive


def _refreshable(
    project: Project, target: Environment, source_name: str, field: str
) -> Environment:
    """The source of a refresh into `target`, or the reason there can be none."""
    if project.adopted:
        raise Conflict(
            f"Project '{project.slug}' was adopted: its databases are not on Hatchery's "
            "server, where a refresh builds the new database"
        )
    if target.position == max(e.position for e in project.environments):
        raise Conflict(
            f"'{target.name}' is the last environment in promotion order: it is never "
            "refreshed from another"
        )
    source = environment_named(project, source_name, field)
    if source.id == target.id:
        raise InvalidInput(
            f"'{target.name}' cannot be refreshed from itself",
            errors=[FieldError(field=field, message="the environment itself", type="value_error")],
        )
    return source


async def start_refresh(
    session: AsyncSession,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
    body: RefreshCreate,
    key: ApiKey,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    project = await active_project(session, project_id)
    target = environment_named(project, name)
    source = _refreshable(project, target, body.source, "body.from")
    if body.backup_id is not None:
        found = await migrations_repository.get_backup(session, body.backup_id)
        if found is None or found.environment_id != source.id:
            raise NotFound(f"Environment '{source.name}' has no backup {body.backup_id}")
    return await runs.create_run(
        session,
        project_id=project.id,
        kind=RunKind.refresh,
        idempotency_key=f"key:{idempotency_key}" if idempotency_key else None,
        params=RefreshParams(environment=target.name, source=source.name, backup_id=body.backup_id),
        key_id=key.id,
    )


async def plan_refresh(
    session: AsyncSession, settings: Settings, project_id: uuid.UUID, name: str, body: RefreshCreate
) -> RefreshPlan:
    """What a refresh would mask, read from the source's catalog now; copies nothing."""
    project = await active_project(session, project_id)
    target = environment_named(project, name)
    source = _refreshable(project, target, body.source, "body.from")
    url = provisioning.connection_url(source, settings.encryption_secret)
    try:
        async with db.connection(
            url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 10}
        ) as conn:
            masked, problems = await masking.planned(
                conn, target.masking_rules or [], sensitive(settings)
            )
            rows = await masking.row_counts(conn, {m.column.qualified_table for m in masked})
    except (DBAPIError, OSError, TimeoutError):
        raise Unavailable(f"the database of '{source.name}' cannot be reached") from None
    columns = [
        MaskedColumn(
            table=m.column.qualified_table,
            column=m.column.name,
            type=m.column.type,
            strategy=m.strategy,
            rows=rows[m.column.qualified_table],
            verified=m.verified,
        )
        for m in masked
    ]
    return RefreshPlan(source=source.name, target=target.name, columns=columns, problems=problems)


async def get_masking(session: AsyncSession, project_id: uuid.UUID, name: str) -> MaskingOut:
    project = await projects.get_project(session, project_id)
    environment = environment_named(project, name)
    return MaskingOut(environment=environment.name, rules=environment.masking_rules or [])


async def set_masking(
    session: AsyncSession, project_id: uuid.UUID, name: str, body: MaskingRules, key: ApiKey
) -> MaskingOut:
    project = await active_project(session, project_id)
    environment = environment_named(project, name)
    rules = [rule.model_dump(exclude_none=True) for rule in body.rules]
    environment.masking_rules = rules or None
    await audit.record(
        session, "environment.masking_set", key_id=key.id, project_id=project.id,
        detail={"environment": name, "rules": len(rules)},
    )  # fmt: skip
    return MaskingOut(environment=environment.name, rules=environment.masking_rules or [])


def _schedule_out(environment: Environment) -> RefreshScheduleOut:
    return RefreshScheduleOut(
        environment=environment.name,
        schedule=environment.refresh_schedule,
        next_at=environment.refresh_next_at,
    )


async def get_schedule(
    session: AsyncSession, project_id: uuid.UUID, name: str
) -> RefreshScheduleOut:
    project = await projects.get_project(session, project_id)
    return _schedule_out(environment_named(project, name))


async def set_schedule(
    session: AsyncSession,
    project_id: uuid.UUID,
    name: str,
    body: RefreshSchedule | None,
    key: ApiKey,
) -> RefreshScheduleOut:
    """Set (or with None, clear) when workers refresh the environment."""
    project = await active_project(session, project_id)
    target = environment_named(project, name)
    if body is None:
        target.refresh_schedule, target.refresh_next_at = None, None
    else:
        _refreshable(project, target, body.source, "body.from")
        try:
            next_at = windows.next_at(body.at, db.utcnow())
        except windows.InvalidWindow as exc:
            error = FieldError(field="body.at", message=str(exc), type="value_error")
            raise InvalidInput(str(exc), errors=[error]) from None
        target.refresh_schedule = body.model_dump(by_alias=True)
        target.refresh_next_at = next_at
    await audit.record(
        session, "environment.refresh_schedule_set", key_id=key.id, project_id=project.id,
        detail={"environment": name, "schedule": target.refresh_schedule},
    )  # fmt: skip
    return _schedule_out(target)


async def start_scheduled(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """The refreshes whose schedule is due: one run per tick, whichever workers look (the
    environment row is locked, skipped by the others, and the tick is the run's
    idempotency key); the next tick is set in the same transaction."""
    started = 0
    async with sessionmaker() as session, db.transaction(session):
        due = await session.scalars(
            select(Environment)
            .where(Environment.refresh_next_at <= db.utcnow())
            .with_for_update(skip_locked=True)
        )
        for environment in due.all():
            tick = environment.refresh_next_at
            schedule = environment.refresh_schedule or {}
            assert tick is not None
            environment.refresh_next_at = (
                windows.next_at(schedule["at"], db.utcnow()) if schedule else None
            )
            project = await projects.get_project(session, environment.project_id)
            if project.status != ProjectStatus.active:
                continue
            await runs.create_run(
                session,
                project_id=project.id,
                kind=RunKind.refresh,
                trigger=RunTrigger.schedule,
                idempotency_key=f"schedule:{environment.id}:{tick.isoformat()}",
                params=RefreshParams(environment=environment.name, source=schedule["from"]),
            )
            log.info("refresh_scheduled", environment=environment.name, tick=tick.isoformat())
            started += 1
    return started
