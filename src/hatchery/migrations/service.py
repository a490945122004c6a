import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import queue
from hatchery.audit import service as audit
from hatchery.config import Settings
from hatchery.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from hatchery.keys.models import ApiKey, Scope
from hatchery.migrations import gating, repository, runner, steps
from hatchery.migrations.checkout import checkout
from hatchery.migrations.models import Backup, MigrationRecord
from hatchery.migrations.schemas import (
    AppliedInfo,
    DeploymentCreate,
    DryRun,
    MigrationCreate,
    RevisionOut,
    Revisions,
    RollbackCreate,
)
from hatchery.projects import git, provisioning
from hatchery.projects import service as projects
from hatchery.projects.initialization import repository_path
from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.runs import service as runs
from hatchery.runs.models import Run, RunKind, RunTrigger


async def _active_project(session: AsyncSession, project_id: uuid.UUID) -> Project:
    project = await projects.get_project(session, project_id)
    if project.status != ProjectStatus.active:
        raise Conflict(f"Project '{project.slug}' is {project.status}, not active")
    return project


def _environment(project: Project, name: str, field: str | None = None) -> Environment:
    for environment in project.environments:
        if environment.name == name:
            return environment
    if field is None:
        raise NotFound(f"Project '{project.slug}' has no environment '{name}'")
    raise InvalidInput(
        f"Project '{project.slug}' has no environment '{name}'",
        errors=[FieldError(field=field, message="unknown environment", type="unknown")],
    )


async def _commit(project: Project, wanted: str | None, field: str) -> str:
    commit = await git.head_commit(repository_path(project), wanted or "main")
    if commit is None:
        raise InvalidInput(
            f"commit {wanted} is not in the project's repository",
            errors=[FieldError(field=field, message="unknown commit", type="unknown")],
        )
    return commit


async def _target_at(project: Project, commit: str, wanted: str | None) -> str | None:
    """The revision a migration at `commit` would reach; None when preflight must decide
    (several heads, an unknown target): the run then fails with the reason."""
    async with checkout(project, commit) as scripts:
        heads = scripts.heads()
        found = scripts.get(wanted) if wanted else None
        if wanted:
            return found.revision if found else None
        return heads[0] if len(heads) == 1 else None


async def _gate(
    session: AsyncSession,
    project: Project,
    environment: Environment,
    target: str | None,
    key: ApiKey,
    force: bool,
) -> None:
    if force:
        if not key.allows(Scope.admin):
            raise Forbidden("Only an admin key may force a migration past promotion gating")
        await audit.record(
            session,
            "migration.forced",
            key_id=key.id,
            project_id=project.id,
            detail={"environment": environment.name, "target": target},
        )
    elif target is not None:
        await gating.check(session, project, environment, target)


async def deploy(
    session: AsyncSession,
    job_queue: queue.Queue,
    project_id: uuid.UUID,
    body: DeploymentCreate,
    key: ApiKey,
) -> tuple[Run, bool]:
    """The upgrade run for a CI deployment: created once per deployment id."""
    project = await _active_project(session, project_id)
    environment = _environment(project, body.environment, "body.environment")
    idempotency_key = f"deployment:{body.deployment_id}"
    existing = await runs.find_by_idempotency_key(session, project.id, idempotency_key)
    if existing is not None:
        return existing, False
    commit = await git.head_commit(repository_path(project), body.commit_sha)
    # An unknown commit is not refused here: the run's checkout step fails, as CI expects.
    target = await _target_at(project, commit, body.target_revision) if commit else None
    await _gate(session, project, environment, target, key, body.force)
    return await runs.create_run(
        session,
        job_queue,
        project_id=project.id,
        kind=RunKind.upgrade,
        steps=steps.UPGRADE.step_names,
        idempotency_key=idempotency_key,
        trigger=RunTrigger.deployment,
        params={
            "environment": environment.name,
            "commit_sha": commit or body.commit_sha,
            "deployment_id": body.deployment_id,
            "target_revision": body.target_revision,
            "force": body.force,
        },
        key_id=key.id,
    )


async def dry_run(
    session: AsyncSession,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
    body: MigrationCreate,
) -> DryRun:
    project = await _active_project(session, project_id)
    environment = _environment(project, name)
    commit = await _commit(
        project, body.commit_sha or environment.deployed_commit, "body.commit_sha"
    )
    url = provisioning.connection_url(environment, settings.encryption_secret)
    current = await runner.current_revision(url)
    async with checkout(project, commit) as scripts:
        target = _resolve(scripts, body.target)
        pending = scripts.upgrade_path(current, target) if current != target else []
        sql = scripts.offline_sql(current, target) if pending else ""
    return DryRun(commit=commit, current=current, target=target, pending=pending, sql=sql)


def _resolve(scripts: runner.Scripts, wanted: str) -> str:
    heads = scripts.heads()
    if wanted == "head":
        if len(heads) != 1:
            raise Conflict(f"the migrations have {len(heads)} heads: {', '.join(heads)}")
        return heads[0]
    found = scripts.get(wanted)
    if found is None:
        raise InvalidInput(
            f"revision {wanted} is not in the history",
            errors=[FieldError(field="body.target", message="unknown revision", type="unknown")],
        )
    return found.revision


async def start_migration(
    session: AsyncSession,
    job_queue: queue.Queue,
    project_id: uuid.UUID,
    name: str,
    body: MigrationCreate,
    key: ApiKey,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    project = await _active_project(session, project_id)
    environment = _environment(project, name)
    commit = await _commit(
        project, body.commit_sha or environment.deployed_commit, "body.commit_sha"
    )
    async with checkout(project, commit) as scripts:
        target = _resolve(scripts, body.target)
    await _gate(session, project, environment, target, key, body.force)
    return await _create(
        session,
        job_queue,
        project,
        RunKind.upgrade,
        steps.UPGRADE.step_names,
        {"environment": name, "commit_sha": commit, "target_revision": target, "force": body.force},
        key,
        idempotency_key,
    )


async def rollback(
    session: AsyncSession,
    job_queue: queue.Queue,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
    body: RollbackCreate,
    key: ApiKey,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    project = await _active_project(session, project_id)
    environment = _environment(project, name)
    if body.backup_id is not None:
        backup = await repository.get_backup(session, body.backup_id)
        if backup is None or backup.environment_id != environment.id:
            raise NotFound(f"Environment '{name}' has no backup {body.backup_id}")
        return await _create(
            session, job_queue, project, RunKind.restore, steps.RESTORE.step_names,
            {"environment": name, "backup_id": str(backup.id)}, key, idempotency_key,
        )  # fmt: skip
    assert body.target_revision is not None
    current = await runner.current_revision(
        provisioning.connection_url(environment, settings.encryption_secret)
    )
    if current is None:
        raise Conflict(f"Environment '{name}' has no revision to roll back from")
    commit = await _commit(project, environment.deployed_commit, "body.target_revision")
    async with checkout(project, commit) as scripts:
        # Refused here, before anything runs, when a revision on the way cannot be undone.
        gating.revisions_to_revert(scripts, current, body.target_revision)
    return await _create(
        session, job_queue, project, RunKind.downgrade, steps.DOWNGRADE.step_names,
        {"environment": name, "target_revision": body.target_revision}, key, idempotency_key,
    )  # fmt: skip


async def _create(
    session: AsyncSession,
    job_queue: queue.Queue,
    project: Project,
    kind: RunKind,
    step_names: list[str],
    params: dict[str, object],
    key: ApiKey,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    return await runs.create_run(
        session,
        job_queue,
        project_id=project.id,
        kind=kind,
        steps=step_names,
        idempotency_key=f"key:{idempotency_key}" if idempotency_key else None,
        params=params,
        key_id=key.id,
    )


async def revisions(
    session: AsyncSession, settings: Settings, project_id: uuid.UUID, name: str
) -> Revisions:
    project = await projects.get_project(session, project_id)
    environment = _environment(project, name)
    commit = environment.deployed_commit or await git.head_commit(repository_path(project))
    if commit is None or environment.database_url is None:
        return Revisions(
            environment=name, commit=commit, current=None, head=None, pending=[], history=[]
        )
    current = await runner.current_revision(
        provisioning.connection_url(environment, settings.encryption_secret)
    )
    landed = repository.applied(await repository.records(session, environment.id))
    async with checkout(project, commit) as scripts:
        heads = scripts.heads()
        head = heads[0] if len(heads) == 1 else None
        pending = scripts.upgrade_path(current, head) if head and current != head else []
        items = [
            RevisionOut(
                revision=r.revision,
                down_revisions=list(r.down_revisions),
                message=r.message,
                applied=_applied(landed.get(r.revision)),
            )
            for r in scripts.history()
        ]
    return Revisions(
        environment=name, commit=commit, current=current, head=head, pending=pending, history=items
    )


def _applied(record: MigrationRecord | None) -> AppliedInfo | None:
    if record is None:
        return None
    return AppliedInfo(
        at=record.finished_at,
        by_key_id=record.key_id,
        run_id=record.run_id,
        deployment_id=record.deployment_id,
        duration_ms=record.duration_ms,
    )


async def list_backups(session: AsyncSession, project_id: uuid.UUID, name: str) -> Sequence[Backup]:
    project = await projects.get_project(session, project_id)
    return await repository.backups(session, _environment(project, name).id)
