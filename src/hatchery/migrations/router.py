import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse

from hatchery.db import SessionDep
from hatchery.deps import IdempotencyKey, JobsDep, SettingsDep
from hatchery.errors import error_responses
from hatchery.keys.auth import ProjectsReader, check_project, require
from hatchery.keys.models import ApiKey, Scope
from hatchery.migrations import service
from hatchery.migrations.schemas import (
    BackupList,
    BackupOut,
    DeploymentCreate,
    DryRun,
    MigrationCreate,
    Revisions,
    RollbackCreate,
    Windows,
    WindowsUpdate,
)
from hatchery.ratelimit import DeploymentsLimited
from hatchery.runs.models import Run
from hatchery.runs.schemas import RunOut, run_out

router = APIRouter(tags=["migrations"], responses=error_responses(401, 403, 404, 422, 503))

Deployer = Annotated[ApiKey, Depends(require(Scope.deploy, Scope.migrations_write))]
Migrator = Annotated[ApiKey, Depends(require(Scope.migrations_write))]
ENVIRONMENT = "/projects/{project_id}/environments/{environment}"
RUN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": RunOut, "description": "The run an earlier, identical request made"},
    202: {"model": RunOut, "description": "A new run"},
}


def run_response(run: Run, created: bool) -> JSONResponse:
    return JSONResponse(
        run_out(run).model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        headers={"Location": f"/api/v1/runs/{run.id}"},
    )


@router.post(
    "/projects/{project_id}/deployments",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    name="create_deployment",
    summary="Report a deployment",
    responses={**error_responses(409), **RUN_RESPONSES},
)
async def create_deployment(
    project_id: uuid.UUID,
    body: DeploymentCreate,
    session: SessionDep,
    jobs: JobsDep,
    settings: SettingsDep,
    key: Deployer,
    _: DeploymentsLimited,
) -> JSONResponse:
    """CI reports a successful deployment: an `upgrade` run migrates the environment's
    database to the head at `commit_sha` (backup first, one migrator at a time, all or
    nothing). The same `deployment_id` again returns the same run with 200. A later
    environment only accepts a revision its predecessor has passed (409 otherwise)."""
    check_project(key, project_id)
    run, created = await service.deploy(session, jobs, settings, project_id, body, key)
    return run_response(run, created)


@router.post(
    ENVIRONMENT + "/migrations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    name="create_migration",
    summary="Migrate an environment (or dry-run it)",
    responses={**error_responses(409), **RUN_RESPONSES, 200: {"model": DryRun | RunOut}},
)
async def create_migration(
    project_id: uuid.UUID,
    environment: str,
    body: MigrationCreate,
    session: SessionDep,
    jobs: JobsDep,
    settings: SettingsDep,
    key: Migrator,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Upgrade to `target` at the environment's deployed commit. With `dry_run` the answer
    is the offline SQL of the pending revisions (200) and nothing is touched."""
    check_project(key, project_id)
    if body.dry_run:
        plan = await service.dry_run(session, jobs, settings, project_id, environment, body)
        return JSONResponse(plan.model_dump(mode="json"))
    run, created = await service.start_migration(
        session, jobs, settings, project_id, environment, body, key, idempotency_key
    )
    return run_response(run, created)


@router.post(
    ENVIRONMENT + "/rollbacks",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    name="create_rollback",
    summary="Roll an environment back",
    responses={**error_responses(409), **RUN_RESPONSES},
)
async def create_rollback(
    project_id: uuid.UUID,
    environment: str,
    body: RollbackCreate,
    session: SessionDep,
    jobs: JobsDep,
    settings: SettingsDep,
    key: Migrator,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """`target_revision`: a `downgrade` run (backup first); refused up front when a
    revision on the way has no usable downgrade. `backup_id`: a `restore` run that backs
    up the current state, then restores the backup."""
    check_project(key, project_id)
    run, created = await service.rollback(
        session, jobs, settings, project_id, environment, body, key, idempotency_key
    )
    return run_response(run, created)


@router.get(
    ENVIRONMENT + "/revisions",
    response_model=Revisions,
    name="get_revisions",
    summary="Migration history of an environment",
    responses=error_responses(409),
)
async def get_revisions(
    project_id: uuid.UUID,
    environment: str,
    session: SessionDep,
    jobs: JobsDep,
    settings: SettingsDep,
    key: ProjectsReader,
) -> Revisions:
    """The revisions at the last deployed commit, with the current one, the head, what is
    pending, and when, by whom and how fast each applied one landed."""
    check_project(key, project_id)
    return await service.revisions_of(session, jobs, settings, project_id, environment)


@router.get(
    ENVIRONMENT + "/backups",
    response_model=BackupList,
    name="list_backups",
    summary="Backups of an environment",
)
async def list_backups(
    project_id: uuid.UUID, environment: str, session: SessionDep, key: ProjectsReader
) -> BackupList:
    """Newest first. Old ones are pruned by count and age, never the newest."""
    check_project(key, project_id)
    found = await service.list_backups(session, project_id, environment)
    return BackupList(items=[BackupOut.model_validate(b) for b in found])


@router.get(
    ENVIRONMENT + "/windows",
    response_model=Windows,
    name="get_windows",
    summary="Deploy windows of an environment",
)
async def get_windows(
    project_id: uuid.UUID, environment: str, session: SessionDep, key: ProjectsReader
) -> Windows:
    """When deploys may migrate the environment, and when the next window opens."""
    check_project(key, project_id)
    return await service.get_windows(session, project_id, environment)


@router.put(
    ENVIRONMENT + "/windows",
    response_model=Windows,
    name="set_windows",
    summary="Set the deploy windows of an environment",
    responses=error_responses(409),
)
async def set_windows(
    project_id: uuid.UUID,
    environment: str,
    body: WindowsUpdate,
    session: SessionDep,
    key: Migrator,
) -> Windows:
    """A deployment reported outside every window is accepted (202) and its run waits
    `scheduled` until the next one opens (`not_before`); it never starts after a window
    closes. An empty list: deploys migrate at once. Manual migrations, rollbacks and
    forced deployments are not held."""
    check_project(key, project_id)
    return await service.set_windows(session, project_id, environment, body, key)
