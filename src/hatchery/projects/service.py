import uuid
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import pagination, queue
from hatchery.config import Settings
from hatchery.errors import Conflict, FieldError, InvalidInput, NotFound
from hatchery.keys.models import ApiKey
from hatchery.projects import deletion, initialization, provisioning, repository, templates
from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.projects.schemas import ProjectCreate
from hatchery.runs import repository as runs_repository
from hatchery.runs import service as runs
from hatchery.runs.models import Run, RunKind, RunStatus, RunTrigger


def repository_path(settings: Settings, slug: str, project_id: uuid.UUID) -> Path:
    return (settings.repositories_dir / f"{slug}-{project_id.hex[:8]}.git").resolve()


async def create_project(
    session: AsyncSession,
    job_queue: queue.Queue,
    settings: Settings,
    body: ProjectCreate,
    key: ApiKey,
    idempotency_key: str | None = None,
) -> tuple[Project, Run, bool]:
    """The project and its initialize run, and whether they are new: a request repeated
    with the same Idempotency-Key gets what the first one made."""
    creation_key = f"create:{idempotency_key}" if idempotency_key else None
    if creation_key is not None:
        earlier = await _created_with(session, creation_key)
        if earlier is not None:
            return earlier[0], earlier[1], False
    if body.template not in templates.available(settings.extra_templates_dir):
        raise InvalidInput(
            f"Unknown template '{body.template}'",
            errors=[FieldError(field="body.template", message="unknown template", type="unknown")],
        )
    project_id = uuid.uuid4()
    project = Project(
        id=project_id,
        slug=body.slug,
        name=body.name,
        template=body.template,
        status=ProjectStatus.pending,
        repository_url=repository_path(settings, body.slug, project_id).as_uri(),
        environments=[
            Environment(
                name=name,
                position=position,
                database_name=provisioning.object_name(body.slug, project_id, name),
                role_name=provisioning.object_name(body.slug, project_id, name),
            )
            for position, name in enumerate(body.environments)
        ],
    )
    try:
        async with session.begin_nested():
            session.add(project)
            await session.flush()
    except IntegrityError:
        # The same request, sent twice at once, finds the first one's project here.
        earlier = await _created_with(session, creation_key) if creation_key else None
        if earlier is not None:
            return earlier[0], earlier[1], False
        raise Conflict(f"A project with slug '{body.slug}' already exists") from None
    run, _ = await runs.create_run(
        session,
        job_queue,
        project_id=project.id,
        kind=RunKind.initialize,
        steps=initialization.PLAN.step_names,
        key_id=key.id,
        idempotency_key=creation_key,
    )
    return project, run, True


async def _created_with(session: AsyncSession, creation_key: str) -> tuple[Project, Run] | None:
    run = await runs_repository.get_creation(session, creation_key)
    if run is None:
        return None
    return await get_project(session, run.project_id), run


async def get_project(session: AsyncSession, project_id: uuid.UUID) -> Project:
    project = await repository.get(session, project_id)
    if project is None:
        raise NotFound(f"No project with id {project_id}")
    return project


async def latest_run(session: AsyncSession, project_id: uuid.UUID) -> Run | None:
    return await runs_repository.latest(session, project_id)


async def list_projects(
    session: AsyncSession,
    *,
    status: ProjectStatus | None,
    cursor: str | None,
    limit: int,
    key: ApiKey,
) -> tuple[Sequence[Project], str | None]:
    if key.project_id is not None:
        project = await repository.get(session, key.project_id)
        visible = [project] if project and (status is None or project.status == status) else []
        return visible, None
    after = pagination.decode(cursor) if cursor else None
    page = await repository.list_page(session, status=status, after=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return page, pagination.encode(page[-1].created_at, page[-1].id) if more else None


async def retry_initialization(
    session: AsyncSession,
    job_queue: queue.Queue,
    project_id: uuid.UUID,
    key: ApiKey,
    idempotency_key: str | None = None,
) -> tuple[Run, bool]:
    retry_key = f"key:{idempotency_key}" if idempotency_key else None
    if retry_key is not None:
        earlier = await runs.find_by_idempotency_key(session, project_id, retry_key)
        if earlier is not None:
            return earlier, False
    project = await get_project(session, project_id)
    last = await runs_repository.latest(session, project_id, RunKind.initialize)
    if project.status != ProjectStatus.failed or last is None or not last.status.finished:
        raise Conflict(
            f"Project '{project.slug}' is {project.status}: only a failed one is retried"
        )
    project.status = ProjectStatus.pending
    return await runs.create_run(
        session,
        job_queue,
        project_id=project_id,
        kind=RunKind.initialize,
        steps=initialization.PLAN.step_names,
        trigger=RunTrigger.retry,
        attempt=last.attempt + 1,
        idempotency_key=retry_key,
        key_id=key.id,
    )


async def delete_project(
    session: AsyncSession, job_queue: queue.Queue, project_id: uuid.UUID, key: ApiKey
) -> tuple[Run, bool]:
    """Start a delete run; the run already under way (or done) when there is one. Returns
    the run and whether it was created now."""
    project = await get_project(session, project_id)
    last_delete = await runs_repository.latest(session, project_id, RunKind.delete)
    if last_delete is not None and last_delete.status != RunStatus.failed:
        return last_delete, False
    active = await runs_repository.active(session, project_id)
    if active is not None:
        raise Conflict(f"Run {active.id} ({active.kind}) is under way: cancel it or wait for it")
    project.status = ProjectStatus.deleting
    run, _ = await runs.create_run(
        session,
        job_queue,
        project_id=project_id,
        kind=RunKind.delete,
        steps=deletion.PLAN.step_names,
        key_id=key.id,
    )
    return run, True
