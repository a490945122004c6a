import uuid
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import crypto, pagination, redaction
from hatchery.config import Settings
from hatchery.errors import Conflict, FieldError, InvalidInput, NotFound
from hatchery.keys.models import ApiKey
from hatchery.migrator import execution
from hatchery.projects import admission, provisioning, repository, templates
from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.projects.params import DeleteParams, InitializeParams
from hatchery.projects.schemas import Adoption, MigrationSettingsUpdate, ProjectCreate
from hatchery.runs import repository as runs_repository
from hatchery.runs import service as runs
from hatchery.runs.models import Run, RunKind, RunStatus, RunTrigger

KEEPS = "An adopted project is forgotten: its databases and repository are left untouched."


def migrations_source(project: Project) -> execution.Source:
    """Where the project's migrations are and how it runs them, for the migrator."""
    return execution.Source(
        project_id=str(project.id),
        repository=project.repository,
        alembic_ini=project.alembic_ini,
        chosen=project.migration_settings or {},
    )


def repository_path(settings: Settings, slug: str, project_id: uuid.UUID) -> Path:
    return (settings.repositories_dir / f"{slug}-{project_id.hex[:8]}.git").resolve()


async def create_project(
    session: AsyncSession,
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
    project_id = uuid.uuid4()
    if body.adopt is not None:
        project = await _adopted(settings, body, body.adopt, project_id)
        params = InitializeParams(variant="adopt", stamp=body.adopt.stamp)
    else:
        project = _hatched(settings, body, project_id)
        params = InitializeParams()
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
        project_id=project.id,
        kind=RunKind.initialize,
        params=params,
        key_id=key.id,
        idempotency_key=creation_key,
    )
    return project, run, True


def _hatched(settings: Settings, body: ProjectCreate, project_id: uuid.UUID) -> Project:
    if body.template not in templates.available(settings.extra_templates_dir):
        raise InvalidInput(
            f"Unknown template '{body.template}'",
            errors=[FieldError(field="body.template", message="unknown template", type="unknown")],
        )
    path = repository_path(settings, body.slug, project_id)
    return Project(
        id=project_id,
        slug=body.slug,
        name=body.name,
        template=body.template,
        status=ProjectStatus.pending,
        repository_url=path.as_uri(),
        repository_path=str(path),
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


async def _adopted(
    settings: Settings, body: ProjectCreate, adopt: Adoption, project_id: uuid.UUID
) -> Project:
    try:
        origin = admission.check_repository(adopt.repository_url, settings)
    except admission.Refused as exc:
        raise _refused(str(exc), "body.adopt.repository_url") from None
    environments = []
    for position, adopted in enumerate(adopt.environments):
        field = f"body.adopt.environments.{position}.database_url"
        try:
            url = make_url(adopted.database_url.get_secret_value())
        except ArgumentError:
            url = None
        if url is None or not url.drivername.startswith("postgresql") or not url.database:
            raise InvalidInput(
                f"Environment '{adopted.name}': expected postgresql://user:password@host/database",
                errors=[FieldError(field=field, message="not a PostgreSQL URL", type="url")],
            )
        url = url.set(drivername="postgresql+asyncpg")
        try:
            await admission.check_database(url, settings)
        except admission.Refused as exc:
            raise _refused(f"Environment '{adopted.name}': {exc}", field) from None
        environments.append(
            Environment(
                name=adopted.name,
                position=position,
                database_name=url.database,
                role_name=url.username or "",
                database_url=provisioning.seal(
                    url.render_as_string(hide_password=False), settings.encryption_secret
                ),
            )
        )
    return Project(
        id=project_id,
        slug=body.slug,
        name=body.name,
        template=None,
        status=ProjectStatus.pending,
        repository_url=redaction.public_url(origin),
        repository_path=str(repository_path(settings, body.slug, project_id)),
        origin_url=crypto.encrypt(origin, settings.encryption_secret),
        branch=adopt.branch,
        alembic_ini=adopt.alembic_ini,
        migration_settings=adopt.migrations.model_dump(),
        environments=environments,
    )


def _refused(detail: str, field: str) -> InvalidInput:
    return InvalidInput(detail, errors=[FieldError(field=field, message=detail, type="refused")])


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
    slug: str | None,
    cursor: str | None,
    limit: int,
    key: ApiKey,
) -> tuple[Sequence[Project], str | None]:
    if key.project_id is not None:
        project = await repository.get(session, key.project_id)
        visible = (
            [project]
            if project
            and (status is None or project.status == status)
            and (slug is None or project.slug == slug)
            else []
        )
        return visible, None
    after = pagination.decode(cursor) if cursor else None
    page = await repository.list_page(
        session, status=status, slug=slug, after=after, limit=limit + 1
    )
    more = len(page) > limit
    page = page[:limit]
    return page, pagination.encode(page[-1].created_at, page[-1].id) if more else None


async def set_migration_settings(
    session: AsyncSession, project_id: uuid.UUID, body: MigrationSettingsUpdate
) -> Project:
    """How the project's migrations run from now on (a retry of a failed initialization
    picks them up)."""
    project = await get_project(session, project_id)
    if project.status in (ProjectStatus.deleting, ProjectStatus.deleted):
        raise Conflict(f"Project '{project.slug}' is {project.status}")
    project.alembic_ini = body.alembic_ini or project.alembic_ini
    project.migration_settings = body.model_dump(exclude={"alembic_ini"})
    await session.flush()
    await session.refresh(project, ["updated_at"])  # set by the database on update
    return project


async def retry_initialization(
    session: AsyncSession,
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
        project_id=project_id,
        kind=RunKind.initialize,
        params=InitializeParams.model_validate(last.params),
        trigger=RunTrigger.retry,
        attempt=last.attempt + 1,
        idempotency_key=retry_key,
        key_id=key.id,
    )


async def delete_project(
    session: AsyncSession, project_id: uuid.UUID, key: ApiKey
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
        project_id=project_id,
        kind=RunKind.delete,
        params=DeleteParams(variant="forget" if project.adopted else None),
        key_id=key.id,
    )
    if project.adopted:
        run.result = {"kept": KEEPS}
    return run, True
