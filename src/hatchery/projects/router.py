import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.db import SessionDep
from hatchery.deps import IdempotencyKey, SettingsDep
from hatchery.errors import error_responses
from hatchery.keys.auth import (
    CurrentKey,
    ProjectsReader,
    ProjectsWriter,
    ReaderOrDeployer,
    check_project,
    check_unbound,
)
from hatchery.projects import service, templates
from hatchery.projects.models import Project, ProjectStatus
from hatchery.projects.schemas import (
    MigrationSettingsUpdate,
    ProjectCreate,
    ProjectCreated,
    ProjectList,
    ProjectOut,
    TemplateList,
    TemplateOut,
)
from hatchery.runs.schemas import RunOut, run_out

router = APIRouter(tags=["projects"], responses=error_responses(401, 403, 422))


def _project_out(project: Project, latest_run: RunOut | None = None) -> ProjectOut:
    out = ProjectOut.model_validate(project)
    out.latest_run = latest_run
    return out


async def _with_latest_run(session: AsyncSession, project: Project) -> ProjectOut:
    latest = await service.latest_run(session, project.id)
    return _project_out(project, run_out(latest) if latest else None)


@router.post(
    "/projects",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ProjectCreated,
    name="create_project",
    summary="Create a project",
    responses={
        **error_responses(409),
        200: {"model": ProjectCreated, "description": "Made earlier with this Idempotency-Key"},
    },
)
async def create_project(
    body: ProjectCreate,
    session: SessionDep,
    settings: SettingsDep,
    key: ProjectsWriter,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create a project from a template. A worker then initializes it (repository,
    databases, baseline migrations, deploy token): follow the returned run's
    `events_url`. Repeated with the same `Idempotency-Key`, it answers 200 with what the
    first request made."""
    check_unbound(key)
    project, run, created = await service.create_project(
        session, settings, body, key, idempotency_key
    )
    answer = ProjectCreated(project=_project_out(project), run=run_out(run))
    return JSONResponse(
        answer.model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        headers={"Location": f"/api/v1/projects/{project.id}"},
    )


@router.get("/projects", response_model=ProjectList, name="list_projects", summary="List projects")
async def list_projects(
    session: SessionDep,
    key: ReaderOrDeployer,
    status: ProjectStatus | None = None,
    slug: Annotated[str | None, Query(max_length=63, description="Only this slug.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ProjectList:
    """Projects, newest first; deleted ones only when asked for by `status=deleted`. A
    deploy token sees its own project (CI can find it by `slug`)."""
    projects, next_cursor = await service.list_projects(
        session, status=status, slug=slug, cursor=cursor, limit=limit, key=key
    )
    return ProjectList(items=[_project_out(p) for p in projects], next_cursor=next_cursor)


@router.get(
    "/projects/{project_id}",
    response_model=ProjectOut,
    name="get_project",
    summary="Get a project",
    responses=error_responses(404),
)
async def get_project(
    project_id: uuid.UUID, session: SessionDep, key: ProjectsReader
) -> ProjectOut:
    """A project with its environments, repository URL, initialization summary and latest run."""
    check_project(key, project_id)
    return await _with_latest_run(session, await service.get_project(session, project_id))


@router.delete(
    "/projects/{project_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    name="delete_project",
    summary="Delete a project",
    responses={
        **error_responses(404, 409),
        200: {"model": RunOut, "description": "Already deleting"},
    },
)
async def delete_project(
    project_id: uuid.UUID, session: SessionDep, key: ProjectsWriter
) -> JSONResponse:
    """Start a `delete` run that drops the project's databases and roles, removes its
    repository and revokes its keys. Asking again returns the same run (200)."""
    check_project(key, project_id)
    run, created = await service.delete_project(session, project_id, key)
    return JSONResponse(
        run_out(run).model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
    )


@router.post(
    "/projects/{project_id}/initialization/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    name="retry_initialization",
    summary="Retry a failed initialization",
    responses={
        **error_responses(404, 409),
        200: {"model": RunOut, "description": "Made earlier with this Idempotency-Key"},
    },
)
async def retry_initialization(
    project_id: uuid.UUID,
    session: SessionDep,
    key: ProjectsWriter,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Start a new initialize run that skips the steps already done and resumes at the one
    that failed."""
    check_project(key, project_id)
    run, created = await service.retry_initialization(session, project_id, key, idempotency_key)
    return JSONResponse(
        run_out(run).model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
    )


@router.put(
    "/projects/{project_id}/migration-settings",
    response_model=ProjectOut,
    name="set_migration_settings",
    summary="Set how a project's migrations run",
    responses=error_responses(404, 409),
)
async def set_migration_settings(
    project_id: uuid.UUID, body: MigrationSettingsUpdate, session: SessionDep, key: ProjectsWriter
) -> ProjectOut:
    """Where its alembic.ini is, which ini section, its env.py or Hatchery's (with a
    version table), the Python requirements of its migrations and the variables its env.py
    reads. Applies to the next run; retry a failed initialization to use them."""
    check_project(key, project_id)
    project = await service.set_migration_settings(session, project_id, body)
    return await _with_latest_run(session, project)


@router.get(
    "/templates", response_model=TemplateList, name="list_templates", summary="List templates"
)
async def list_templates(settings: SettingsDep, _: CurrentKey) -> TemplateList:
    """The templates a project can be created from."""
    found = templates.available(settings.extra_templates_dir).values()
    return TemplateList(items=[TemplateOut(name=t.name, description=t.description) for t in found])
