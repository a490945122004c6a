import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db, git, queue, redaction
from hatchery.audit import service as audit
from hatchery.config import Settings
from hatchery.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound, Unavailable
from hatchery.keys.models import ApiKey, Scope
from hatchery.migrations import gating, repository, windows
from hatchery.migrations.models import Backup, MigrationRecord
from hatchery.migrations.params import (
    DowngradeParams,
    MigrationParams,
    RestoreParams,
    UpgradeParams,
)
from hatchery.migrations.schemas import (
    AppliedInfo,
    DeploymentCreate,
    DryRun,
    MigrationCreate,
    RevisionOut,
    Revisions,
    RollbackCreate,
    WindowOut,
    Windows,
    WindowsUpdate,
)
from hatchery.migrator import execution, revisions, workspace
from hatchery.migrator.revisions import History
from hatchery.migrator.runner import ChildFailed
from hatchery.migrator.venvs import EnvironmentFailed
from hatchery.projects import provisioning
from hatchery.projects import service as projects
from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.runs import service as runs
from hatchery.runs.models import Run, RunKind, RunTrigger

log = structlog.get_logger("hatchery.migrations")

INSPECT_JOB = "inspect_history"
DRY_RUN_JOB = "dry_run"


async def active_project(session: AsyncSession, project_id: uuid.UUID) -> Project:
    project = await projects.get_project(session, project_id)
    if project.status != ProjectStatus.active:
        raise Conflict(f"Project '{project.slug}' is {project.status}, not active")
    return project


def environment_named(project: Project, name: str, field: str | None = None) -> Environment:
    environment = project.environment(name)
    if environment is not None:
        return environment
    if field is None:
        raise NotFound(f"Project '{project.slug}' has no environment '{name}'")
    raise InvalidInput(
        f"Project '{project.slug}' has no environment '{name}'",
        errors=[FieldError(field=field, message="unknown environment", type="unknown")],
    )


async def _commit(project: Project, wanted: str | None, field: str) -> str:
    commit = await git.head_commit(project.repository, wanted or "main")
    if commit is None:
        raise InvalidInput(
            f"commit {wanted} is not in the project's repository",
            errors=[FieldError(field=field, message="unknown commit", type="unknown")],
        )
    return commit


async def _ask_worker(
    jobs: queue.Queue, settings: Settings, job: str, job_id: str, *args: str
) -> dict[str, Any]:
    """What a worker answers (the api runs no project code); 503 with Retry-After when
    it takes longer than the request may wait (the worker goes on), or none is running."""
    if not await queue.worker_alive(jobs):
        raise Unavailable("no worker is running to read the project's migrations", 10)
    await queue.enqueue(jobs, job, *args, job_id=job_id)
    try:
        answer: dict[str, Any] = await queue.result(
            jobs, job_id, timeout=settings.inspection_wait_seconds
        )
    except TimeoutError:
        raise Unavailable(
            "a worker is still reading the project's migrations (its Python environment "
            "may be building): try again shortly"
        ) from None
    except queue.JobFailed as exc:
        log.error("worker_job_failed", job=job, error=redaction.redact(str(exc)))
        raise Unavailable("a worker failed to read the project's migrations", 30) from None
    if "error" in answer:
        raise Conflict(answer["error"])
    return answer


async def history_at(
    jobs: queue.Queue, settings: Settings, project: Project, commit: str
) -> History:
    """The revisions at `commit`, as a worker's child read them (cached by commit)."""
    digest = revisions.site_digest(project.alembic_ini, project.migration_settings)
    found = await revisions.recall(jobs, str(project.id), commit, digest)
    if found is not None:
        return found
    job_id = f"history:{project.id}:{commit}:{digest}"
    answer = await _ask_worker(jobs, settings, INSPECT_JOB, job_id, str(project.id), commit)
    return History.from_child(answer)


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
        refusal = await gating.promotion(session, project, environment, target)
        if refusal is not None:
            raise _http(refusal)


def _http(refusal: gating.Refusal) -> Conflict | InvalidInput:
    if refusal.field is None:
        return Conflict(refusal.reason)
    error = FieldError(field=refusal.field, message=refusal.message, type=refusal.type)
    return InvalidInput(refusal.reason, errors=[error])


async def deploy(
    session: AsyncSession,
    jobs: queue.Queue,
    settings: Settings,
    project_id: uuid.UUID,
    body: DeploymentCreate,
    key: ApiKey,
) -> tuple[Run, bool]:
    """The upgrade run for a CI deployment: created once per deployment id."""
    project = await active_project(session, project_id)
    environment = environment_named(project, body.environment, "body.environment")
    idempotency_key = f"deployment:{body.deployment_id}"
    existing = await runs.find_by_idempotency_key(session, project.id, idempotency_key)
    if existing is not None:
        return existing, False
    commit = await git.head_commit(project.repository, body.commit_sha)
    # An unknown commit (or migrations a worker cannot read now) is not refused here: the
    # run's checkout or preflight fails with the reason, as CI expects. Only a later
    # environment in promotion order is gated here, so only it needs the target now.
    target = None
    gated = any(e.position < environment.position for e in project.environments)
    if commit is not None and gated and not body.force:
        try:
            found = await history_at(jobs, settings, project, commit)
            target = found.resolve(body.target_revision or revisions.HEAD)
        except (Unavailable, Conflict):
            target = None
    await _gate(session, project, environment, target, key, body.force)
    return await runs.create_run(
        session,
        project_id=project.id,
        kind=RunKind.upgrade,
        idempotency_key=idempotency_key,
        trigger=RunTrigger.deployment,
        not_before=start_at(environment, body.not_before, body.force),
        params=UpgradeParams(
            environment=environment.name,
            commit_sha=commit or body.commit_sha,
            deployment_id=body.deployment_id,
            target_revision=body.target_revision,
            force=body.force,
        ),
        key_id=key.id,
    )


def start_at(environment: Environment, asked: datetime | None, force: bool) -> datetime | None:
    """When a deploy may migrate: at `asked` (or now), in the environment's next deploy
    window unless forced. None: at once."""
    if force:
        return asked
    now = db.utcnow()
    return windows.not_before(environment.deploy_windows, max(asked or now, now)) or asked


async def deploy_window(session: AsyncSession, run: Run) -> datetime | None:
    """When a deployment's upgrade run, about to start, may: None inside a window (or
    with none, or forced), else when the next one opens: a run never starts after its
    window has closed."""
    params = UpgradeParams.model_validate(run.params)
    if run.trigger != RunTrigger.deployment or params.force:
        return None
    project = await projects.get_project(session, run.project_id)
    environment = environment_named(project, params.environment)
    return windows.not_before(environment.deploy_windows, db.utcnow())


async def get_windows(session: AsyncSession, project_id: uuid.UUID, name: str) -> Windows:
    project = await projects.get_project(session, project_id)
    return _windows_out(environment_named(project, name))


async def set_windows(
    session: AsyncSession, project_id: uuid.UUID, name: str, body: WindowsUpdate, key: ApiKey
) -> Windows:
    project = await active_project(session, project_id)
    environment = environment_named(project, name)
    environment.deploy_windows = body.windows or None
    await audit.record(
        session, "environment.windows_set", key_id=key.id, project_id=project.id,
        detail={"environment": name, "windows": body.windows},
    )  # fmt: skip
    return _windows_out(environment)


def _windows_out(environment: Environment) -> Windows:
    found = [windows.parse(spec) for spec in environment.deploy_windows or []]
    now = db.utcnow()
    opening = windows.opening(found, now)
    return Windows(
        environment=environment.name,
        windows=[
            WindowOut(
                spec=w.spec,
                days=[windows.DAYS[d] for d in sorted(w.days)],
                start=w.start.isoformat(),
                end=w.end.isoformat(),
                timezone=w.timezone,
            )
            for w in found
        ],
        open_now=opening is None or opening[0] <= now,
        next_open=opening[0] if opening else None,
        closes_at=opening[1] if opening else None,
    )


async def dry_run(
    session: AsyncSession,
    jobs: queue.Queue,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
    body: MigrationCreate,
) -> DryRun:
    """The offline SQL of the pending revisions, rendered by a worker's child from the
    project's own env.py; touches nothing."""
    project = await active_project(session, project_id)
    environment = environment_named(project, name)
    commit = await _commit(
        project, body.commit_sha or environment.deployed_commit, "body.commit_sha"
    )
    found = await history_at(jobs, settings, project, commit)
    target = _resolve(found, body.target)
    job_id = f"dry-run:{uuid.uuid4()}"
    answer = await _ask_worker(
        jobs, settings, DRY_RUN_JOB, job_id, str(project.id), name, commit, target
    )
    return DryRun.model_validate(answer)


def _resolve(found: History, wanted: str) -> str:
    if wanted == revisions.HEAD and len(found.heads) != 1:
        raise Conflict(f"the migrations have {len(found.heads)} heads: {', '.join(found.heads)}")
    resolved = found.resolve(wanted)
    if resolved is None:
        raise InvalidInput(
            f"revision {wanted} is not in the history",
            errors=[FieldError(field="body.target", message="unknown revision", type="unknown")],
        )
    return resolved


async def start_migration(
    session: AsyncSession,
    jobs: queue.Queue,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
    body: MigrationCreate,
    key: ApiKey,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    project = await active_project(session, project_id)
    environment = environment_named(project, name)
    commit = await _commit(
        project, body.commit_sha or environment.deployed_commit, "body.commit_sha"
    )
    target = _resolve(await history_at(jobs, settings, project, commit), body.target)
    await _gate(session, project, environment, target, key, body.force)
    return await _create(
        session,
        project,
        RunKind.upgrade,
        UpgradeParams(
            environment=name, commit_sha=commit, target_revision=target, force=body.force
        ),
        key,
        idempotency_key,
    )


async def rollback(
    session: AsyncSession,
    jobs: queue.Queue,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
    body: RollbackCreate,
    key: ApiKey,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    project = await active_project(session, project_id)
    environment = environment_named(project, name)
    if body.backup_id is not None:
        backup = await repository.get_backup(session, body.backup_id)
        if backup is None or backup.environment_id != environment.id:
            raise NotFound(f"Environment '{name}' has no backup {body.backup_id}")
        return await _create(
            session, project, RunKind.restore,
            RestoreParams(environment=name, backup_id=backup.id), key, idempotency_key,
        )  # fmt: skip
    assert body.target_revision is not None
    current = await _current(environment, settings)
    if current is None:
        raise Conflict(f"Environment '{name}' has no revision to roll back from")
    commit = await _commit(project, environment.deployed_commit, "body.target_revision")
    found = await history_at(jobs, settings, project, commit)
    # Refused here, before anything runs, when a revision on the way cannot be undone.
    try:
        gating.revisions_to_revert(found, current, body.target_revision)
    except gating.Refused as refused:
        raise _http(refused.refusal) from None
    return await _create(
        session, project, RunKind.downgrade,
        DowngradeParams(environment=name, target_revision=body.target_revision), key,
        idempotency_key,
    )  # fmt: skip


async def _create(
    session: AsyncSession,
    project: Project,
    kind: RunKind,
    params: MigrationParams,
    key: ApiKey,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    return await runs.create_run(
        session,
        project_id=project.id,
        kind=kind,
        idempotency_key=f"key:{idempotency_key}" if idempotency_key else None,
        params=params,
        key_id=key.id,
    )


async def revisions_of(
    session: AsyncSession,
    jobs: queue.Queue,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
) -> Revisions:
    project = await projects.get_project(session, project_id)
    if project.status in (ProjectStatus.deleting, ProjectStatus.deleted):
        raise Conflict(f"Project '{project.slug}' is {project.status}")
    environment = environment_named(project, name)
    commit = environment.deployed_commit or await git.head_commit(project.repository)
    if commit is None or environment.database_url is None:
        return Revisions(
            environment=name, commit=commit, current=None, head=None, pending=[], history=[]
        )
    found = await history_at(jobs, settings, project, commit)
    current = await _current(environment, settings)
    landed = repository.applied(await repository.records(session, environment.id))
    head = found.heads[0] if len(found.heads) == 1 else None
    pending = found.upgrade_path(current, head) if head and current != head else []
    items = [
        RevisionOut(
            revision=r.revision,
            down_revisions=list(r.down_revisions),
            message=r.message,
            applied=_applied(landed.get(r.revision)),
        )
        for r in found.revisions
    ]
    return Revisions(
        environment=name, commit=commit, current=current, head=head, pending=pending, history=items
    )


async def _current(environment: Environment, settings: Settings) -> str | None:
    url = provisioning.connection_url(environment, settings.encryption_secret)
    try:
        return await revisions.current(url, environment.version_table)
    except (DBAPIError, OSError, TimeoutError):
        raise Unavailable(f"the database of '{environment.name}' cannot be reached") from None


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
    return await repository.backups(session, environment_named(project, name).id)


# Worker jobs: what the api asks a worker to read with a child.


async def _read(
    settings: Settings,
    redis: Redis,
    project: Project,
    commit: str,
    environment: Environment,
    **fields: Any,
) -> dict[str, Any]:
    key = f"job-{uuid.uuid4()}"

    async def quiet(line: str) -> None:
        return None

    try:
        found = await execution.prepare(
            settings, key, projects.migrations_source(project), commit, quiet
        )
        url = provisioning.connection_url(environment, settings.encryption_secret)
        report = await execution.inspect(settings, found, url, quiet, **fields)
        history = History.from_child(report)
        await revisions.remember(redis, str(project.id), commit, found.digest, history)
        return report
    finally:
        workspace.remove(settings, key)


async def inspect_history(
    session: AsyncSession, redis: Redis, settings: Settings, project_id: uuid.UUID, commit: str
) -> dict[str, Any]:
    project = await projects.get_project(session, project_id)
    try:
        report = await _read(settings, redis, project, commit, project.environments[0])
    except (ChildFailed, EnvironmentFailed, workspace.NoAlembicConfig) as exc:
        return {"error": f"the migrations at {commit[:12]} could not be read: {exc}"}
    return {"heads": report["heads"], "revisions": report["revisions"]}


async def plan_dry_run(
    session: AsyncSession,
    redis: Redis,
    settings: Settings,
    project_id: uuid.UUID,
    name: str,
    commit: str,
    target: str,
) -> dict[str, Any]:
    project = await projects.get_project(session, project_id)
    environment = environment_named(project, name)
    try:
        report = await _read(
            settings, redis, project, commit, environment, current=True, sql=True, target=target
        )
    except (ChildFailed, EnvironmentFailed, workspace.NoAlembicConfig) as exc:
        return {"error": f"the dry run could not be made: {exc}"}
    found = History.from_child(report)
    current = report["current"][0] if report["current"] else None
    pending = found.upgrade_path(current, target) if current != target else []
    alone = [r.revision for r in found.revisions if r.revision in pending and not r.transactional]
    return {
        "commit": commit,
        "current": current,
        "target": target,
        "pending": pending,
        "sql": report.get("sql", ""),
        "unrendered": report.get("unrendered", []),
        "not_all_or_nothing": alone,
    }
