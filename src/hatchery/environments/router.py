import uuid

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from hatchery.db import SessionDep
from hatchery.deps import IdempotencyKey, SettingsDep
from hatchery.environments import service
from hatchery.environments.schemas import (
    MaskingOut,
    MaskingRules,
    RefreshCreate,
    RefreshPlan,
    RefreshSchedule,
    RefreshScheduleOut,
)
from hatchery.errors import error_responses
from hatchery.keys.auth import ProjectsReader, check_project
from hatchery.migrations.router import ENVIRONMENT, RUN_RESPONSES, Migrator, run_response
from hatchery.runs.schemas import RunOut

router = APIRouter(tags=["environments"], responses=error_responses(401, 403, 404, 422, 503))


@router.post(
    ENVIRONMENT + "/refreshes",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    name="create_refresh",
    summary="Refresh an environment from another, masked (or plan it)",
    responses={**error_responses(409), **RUN_RESPONSES, 200: {"model": RefreshPlan | RunOut}},
)
async def create_refresh(
    project_id: uuid.UUID,
    environment: str,
    body: RefreshCreate,
    session: SessionDep,
    settings: SettingsDep,
    key: Migrator,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """A `refresh` run: a verified backup of `from` (or the `backup_id` given) is restored
    into a scratch database, masked by the environment's masking rules, verified (row
    counts, no source value left in a masked column, constraints), then swapped in for
    the environment's database; the target is backed up first and its old database kept
    as the previous one. A failure at any step leaves the environment as it was. Refused
    for the last environment in promotion order. With `dry_run`, the masking plan (200)."""
    check_project(key, project_id)
    if body.dry_run:
        plan = await service.plan_refresh(session, settings, project_id, environment, body)
        return JSONResponse(plan.model_dump(mode="json"))
    run, created = await service.start_refresh(
        session, settings, project_id, environment, body, key, idempotency_key
    )
    return run_response(run, created)


@router.get(
    ENVIRONMENT + "/masking",
    response_model=MaskingOut,
    name="get_masking",
    summary="Masking rules of an environment",
)
async def get_masking(
    project_id: uuid.UUID, environment: str, session: SessionDep, key: ProjectsReader
) -> MaskingOut:
    """The rules a refresh into this environment masks by, on top of the default (every
    column the schema API flags `sensitive`)."""
    check_project(key, project_id)
    return await service.get_masking(session, project_id, environment)


@router.put(
    ENVIRONMENT + "/masking",
    response_model=MaskingOut,
    name="set_masking",
    summary="Set the masking rules of an environment",
    responses=error_responses(409),
)
async def set_masking(
    project_id: uuid.UUID,
    environment: str,
    body: MaskingRules,
    session: SessionDep,
    key: Migrator,
) -> MaskingOut:
    check_project(key, project_id)
    return await service.set_masking(session, project_id, environment, body, key)


@router.get(
    ENVIRONMENT + "/refresh-schedule",
    response_model=RefreshScheduleOut,
    name="get_refresh_schedule",
    summary="When an environment is refreshed",
)
async def get_refresh_schedule(
    project_id: uuid.UUID, environment: str, session: SessionDep, key: ProjectsReader
) -> RefreshScheduleOut:
    check_project(key, project_id)
    return await service.get_schedule(session, project_id, environment)


@router.put(
    ENVIRONMENT + "/refresh-schedule",
    response_model=RefreshScheduleOut,
    name="set_refresh_schedule",
    summary="Refresh an environment on a schedule",
    responses=error_responses(409),
)
async def set_refresh_schedule(
    project_id: uuid.UUID,
    environment: str,
    body: RefreshSchedule,
    session: SessionDep,
    key: Migrator,
) -> RefreshScheduleOut:
    """Workers start one refresh run per tick (`daily 03:00 Europe/Berlin`), however
    many of them are running."""
    check_project(key, project_id)
    return await service.set_schedule(session, project_id, environment, body, key)


@router.delete(
    ENVIRONMENT + "/refresh-schedule",
    response_model=RefreshScheduleOut,
    name="delete_refresh_schedule",
    summary="Stop refreshing an environment on a schedule",
    responses=error_responses(409),
)
async def delete_refresh_schedule(
    project_id: uuid.UUID, environment: str, session: SessionDep, key: Migrator
) -> RefreshScheduleOut:
    check_project(key, project_id)
    return await service.set_schedule(session, project_id, environment, None, key)
