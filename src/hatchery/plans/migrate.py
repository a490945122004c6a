"""The steps of upgrade, downgrade and restore runs. The whole run holds the database's
migration lock, so nothing changes under it between preflight and record. Every Alembic
command runs in a child process (runner.py); the steps read what it reports."""

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db, git
from hatchery.config import Settings
from hatchery.migrations import gating, history, repository
from hatchery.migrations import service as migrations_service
from hatchery.migrations.models import Backup, Direction
from hatchery.migrations.params import (
    DowngradeParams,
    MigrationParams,
    RestoreParams,
    UpgradeParams,
)
from hatchery.migrator import backups, execution, locking, revisions
from hatchery.migrator.revisions import History
from hatchery.migrator.runner import ChildFailed, Hooks
from hatchery.plans import adopt as adoption
from hatchery.plans import common
from hatchery.projects import provisioning
from hatchery.projects.models import Environment, Project
from hatchery.projects.repository import load_project
from hatchery.runs import repository as runs_repository
from hatchery.runs.executor import OutputT, Plan, StepContext, StepFailed, StepOutput
from hatchery.runs.models import Run, RunStatus
from hatchery.schema import cache as schema_cache

CHECKOUT, DEPENDENCIES, PREFLIGHT, BACKUP, MIGRATE, RECORD, RESTORE_BACKUP = (
    "checkout", "dependencies", "preflight", "backup", "migrate", "record", "restore"
)  # fmt: skip


class CheckedOut(StepOutput):
    step = CHECKOUT
    commit: str


class Planned(StepOutput):
    """What preflight found, for the steps after it."""

    step = PREFLIGHT
    current: str | None
    target: str
    pending: list[str]
    per_migration: bool = False  # some revisions commit on their own (autocommit_block)
    sha256: dict[str, str] = {}
    version_table: str | None = None


class Migrated(StepOutput):
    step = MIGRATE
    applied: list[dict[str, Any]] = []
    target: str | None = None


def earlier(context: StepContext, model: type[OutputT]) -> OutputT:
    """An earlier step's output: a migration run never skips a step."""
    found = context.output(model)
    assert found is not None, f"{model.step} was skipped"
    return found


class StepError(StepFailed):
    """A migration step failed, with the child's account when there is one."""

    def __init__(self, message: str, failure: ChildFailed | None = None) -> None:
        super().__init__(message, failure.details() if failure is not None else None)


async def environment_of(context: StepContext) -> tuple[Project, Environment]:
    return await _environment_of(context.session, context.run)


async def _environment_of(session: AsyncSession, run: Run) -> tuple[Project, Environment]:
    """The project of a migration run, and the environment it migrates."""
    project = await load_project(session, run)
    environment = project.environment(MigrationParams.model_validate(run.params).environment)
    assert environment is not None  # environments are never renamed or removed
    return project, environment


def database_url(context: StepContext, environment: Environment) -> str:
    return provisioning.connection_url(environment, context.settings.encryption_secret)


@contextlib.asynccontextmanager
async def migration_lock(context: StepContext) -> AsyncIterator[None]:
    _, environment = await environment_of(context)

    async def waiting() -> None:
        await context.log(f"waiting for another migration of {environment.name} to finish")

    async with locking.exclusive(
        database_url(context, environment),
        environment.database_name,
        wait_seconds=context.settings.migration_wait_seconds,
        on_wait=waiting,
    ):
        yield


async def migrator_alive(session: AsyncSession, run: Run, settings: Settings) -> bool:
    _, environment = await _environment_of(session, run)
    url = provisioning.connection_url(environment, settings.encryption_secret)
    return await locking.held(url, environment.database_name)


async def prepared(context: StepContext, commit: str) -> execution.Prepared:
    project = await load_project(context.session, context.run)
    return await common.prepared(context, project, commit)


async def still_ours(context: StepContext) -> bool:
    """Whether the run is still this worker's to commit (the reaper may have failed it)."""
    async with context.sessionmaker() as session:
        run = await runs_repository.get(session, context.run.id)
        return run is not None and run.status == RunStatus.running


# Upgrade


async def resolve_commit(context: StepContext) -> CheckedOut:
    project, _ = await environment_of(context)
    if project.adopted:
        await adoption.fetch(project, context.settings)
    wanted = context.params(UpgradeParams).commit_sha
    commit = await git.head_commit(project.repository, wanted)
    if commit is None:
        raise StepError(f"commit {wanted} is not in the project's repository")
    return CheckedOut(commit=commit)


async def prepare_environment(context: StepContext) -> dict[str, Any]:
    """The project's own Python dependencies, built with uv (or found built)."""
    return (await prepared(context, earlier(context, CheckedOut).commit)).summary()


async def preflight(context: StepContext) -> Planned:
    project, environment = await environment_of(context)
    params = context.params(UpgradeParams)
    commit = earlier(context, CheckedOut).commit
    found = await prepared(context, commit)
    wanted = params.target_revision or revisions.HEAD
    inspected, report = await _planned(
        context, found, database_url(context, environment), "upgrade", wanted
    )
    if len(inspected.heads) != 1:
        heads = ", ".join(inspected.heads)
        raise StepError(
            f"the migrations at {commit[:12]} have {len(inspected.heads)} heads: {heads}"
        )
    target = inspected.resolve(wanted)
    if target is None:
        raise StepError(f"target revision {wanted} is not in the history at {commit[:12]}")
    current = _single(report["current"])
    _check_unchanged(inspected, await repository.records(context.session, environment.id), commit)
    if not params.force:
        refusal = await gating.promotion(context.session, project, environment, target)
        if refusal is not None:
            raise StepError(refusal.reason)
    if current is not None and current != target and inspected.is_ancestor(target, current):
        raise StepError(
            f"target {target} is behind the current revision {current}: roll back instead"
        )
    pending = inspected.upgrade_path(current, target) if current != target else []
    if not pending:
        await execution.release(str(context.run.id))
    return _plan(context, environment, inspected, report, current, target, pending)


async def _planned(
    context: StepContext, found: execution.Prepared, url: str, command: str, target: str
) -> tuple[History, dict[str, Any]]:
    """The migration's child, started: its report of the history, the current revision
    and the offline SQL; it then waits for the migrate step."""
    _, environment = await environment_of(context)
    try:
        report = await execution.plan(
            context.settings, found, url, command, target, context.log, str(context.run.id),
            locking.migrator_name(environment.database_name),
        )  # fmt: skip
    except ChildFailed as failure:
        message = f"the project's migrations could not be read: {failure}"
        raise StepError(message, failure) from None
    inspected = History.from_child(report)
    await revisions.remember(
        context.redis, str(context.run.project_id), found.workspace.commit, found.digest, inspected
    )
    return inspected, report


def _plan(
    context: StepContext,
    environment: Environment,
    inspected: History,
    report: dict[str, Any],
    current: str | None,
    target: str,
    pending: list[str],
) -> Planned:
    """What preflight found, for the steps after it and for the run's result."""
    alone = [r for r in pending if not _revision(inspected, r).transactional]
    environment.version_table = report.get("version_table") or environment.version_table
    context.run.add_result(
        sql=report.get("sql", ""),
        unrendered=report.get("unrendered", []),
        pending=pending,
        not_all_or_nothing=alone,
    )
    if alone:
        names = ", ".join(alone)
        context.run.add_result(
            plan=f"{names} commit part of themselves (autocommit_block): each revision commits "
            "on its own, a failure leaves the database at the last one that landed, and the "
            "backup is the way back"
        )
    return Planned(
        current=current,
        target=target,
        pending=pending,
        per_migration=bool(alone),
        sha256={r: _revision(inspected, r).sha256 for r in pending},
        version_table=environment.version_table,
    )


def _revision(inspected: History, revision: str) -> revisions.Revision:
    found = inspected.get(revision)
    assert found is not None
    return found


def _single(heads: list[str]) -> str | None:
    if len(heads) > 1:
        raise StepError(f"the database has several heads ({', '.join(heads)}): resolve them first")
    return heads[0] if heads else None


def _check_unchanged(inspected: History, records: Any, commit: str) -> None:
    for revision, record in repository.applied(records).items():
        found = inspected.get(revision)
        if found is None:
            raise StepError(f"revision {revision}, applied here, is missing at {commit[:12]}")
        if record.sha256 and found.sha256 != record.sha256:
            raise StepError(
                f"revision {revision} was changed after it was applied "
                f"({found.path}: sha256 {found.sha256[:12]}, applied {record.sha256[:12]})"
            )


async def take_backup(context: StepContext) -> dict[str, Any]:
    plan = earlier(context, Planned)
    if not plan.pending:
        return {"skipped": "nothing to migrate"}
    _, environment = await environment_of(context)
    return await backup(context, environment, plan.current)


async def backup(
    context: StepContext, environment: Environment, revision: str | None
) -> dict[str, Any]:
    """A verified pg_dump of the environment's database, recorded (older ones pruned)."""
    settings = context.settings
    when = db.utcnow()
    path = backups.location(
        settings.backups_dir, str(environment.project_id), environment.name, when,
        revision or "base",
    )  # fmt: skip
    started = time.monotonic()
    size, sha256 = await backups.dump(database_url(context, environment), path)
    backup = Backup(
        environment_id=environment.id,
        run_id=context.run.id,
        revision=revision,
        size_bytes=size,
        sha256=sha256,
        location=str(path),
        expires_at=backups.expiry(when, settings.backup_keep_days),
    )
    context.session.add(backup)
    await context.session.flush()
    await _prune(context.session, environment, settings.backup_keep_count)
    return {
        "backup_id": str(backup.id),
        "revision": revision,
        "size_bytes": size,
        "sha256": sha256,
        "duration_ms": round((time.monotonic() - started) * 1000),
    }


async def _prune(session: AsyncSession, environment: Environment, keep: int) -> None:
    """Past the count or the age limit, backups go: never the newest one."""
    now = db.utcnow()
    for index, backup in enumerate(await repository.backups(session, environment.id)):
        expired = backup.expires_at is not None and backup.expires_at < now
        if index > 0 and (index >= keep or expired):
            Path(backup.location).unlink(missing_ok=True)
            await session.delete(backup)


async def migrate(context: StepContext) -> Migrated:
    plan = earlier(context, Planned)
    if not plan.pending:
        return Migrated(applied=[])
    return await _migrate(context, plan, Direction.upgrade)


async def _migrate(context: StepContext, plan: Planned, direction: Direction) -> Migrated:
    """Run the child; every landed revision is reported, and the worker says whether the
    child may go on (and commit) only while the run is still its own."""
    _, environment = await environment_of(context)
    found = await prepared(context, earlier(context, CheckedOut).commit)
    url = database_url(context, environment)
    applied: list[dict[str, Any]] = []

    async def landed(event: dict[str, Any]) -> bool:
        applied.append({k: event[k] for k in ("revision", "started_at", "duration_ms")})
        done, total = event["index"], event["total"]
        await context.progress(100 * done / max(total, 1), f"{event['revision']} ({done}/{total})")
        return await still_ours(context)

    hooks = Hooks(context.log, landed, lambda: still_ours(context))
    started = time.time()
    try:
        # The child preflight started waits for this; a new one when it is gone.
        done = await execution.proceed(
            str(context.run.id), hooks, target=plan.target, per_migration=plan.per_migration
        )
        if done is None:
            await execution.migrate(
                context.settings, found, url, direction.value, plan.target, hooks,
                migrator=locking.migrator_name(environment.database_name),
                per_migration=plan.per_migration,
            )  # fmt: skip
    except ChildFailed as failure:
        kept = applied[: len(failure.landed)] if plan.per_migration else []
        await _record_failure(context, plan, direction, failure, kept, started)
        statement = f"; failing statement: {failure.statement}" if failure.statement else ""
        detail = f"{failure}{statement}"
        if kept:
            detail += f" (the database stays at {kept[-1]['revision']}, the last that landed)"
        raise StepError(detail, failure) from failure
    return Migrated(applied=applied, target=plan.target)


async def _record_failure(
    context: StepContext,
    plan: Planned,
    direction: Direction,
    failure: ChildFailed,
    kept: list[dict[str, Any]],
    started: float,
) -> None:
    """Written beside the step's own transaction, which the failure rolls back: what landed
    (revision by revision) and what failed, and where the database now stands."""
    async with context.sessionmaker() as session, db.transaction(session):
        _, environment = await _environment_of(session, context.run)
        sha256s = plan.sha256
        history.record_applied(session, environment, context.run, kept, sha256s, direction)
        if failure.revision:
            history.record_failure(
                session, environment, context.run, failure.revision, direction, started,
                str(failure), failure.statement, sha256s.get(failure.revision),
            )  # fmt: skip
        if kept:
            # Part of the commit's migrations landed: its history is the environment's now.
            url = database_url(context, environment)
            environment.revision = await revisions.current(url, environment.version_table)
            if direction == Direction.upgrade:
                environment.deployed_commit = earlier(context, CheckedOut).commit


async def record(context: StepContext) -> dict[str, Any]:
    _, environment = await environment_of(context)
    plan = earlier(context, Planned)
    applied = earlier(context, Migrated).applied
    direction = Direction(context.run.kind)
    history.record_applied(
        context.session, environment, context.run, applied, plan.sha256, direction
    )
    environment.version_table = plan.version_table or environment.version_table
    environment.revision = await revisions.current(
        database_url(context, environment), environment.version_table
    )
    await schema_cache.invalidate(context.redis, environment.id)
    if direction == Direction.upgrade:
        environment.deployed_commit = earlier(context, CheckedOut).commit
    context.run.add_result(revision=environment.revision)
    return {"revision": environment.revision, "applied": [a["revision"] for a in applied]}


# Downgrade


async def downgrade_preflight(context: StepContext) -> Planned:
    _, environment = await environment_of(context)
    commit = earlier(context, CheckedOut).commit
    wanted = context.params(DowngradeParams).target_revision
    found = await prepared(context, commit)
    url = database_url(context, environment)
    inspected, report = await _planned(context, found, url, "downgrade", wanted)
    current = _single(report["current"])
    if current is None:
        raise StepError("the database has no revision to roll back from")
    _check_unchanged(inspected, await repository.records(context.session, environment.id), commit)
    try:
        reverting = gating.revisions_to_revert(inspected, current, wanted)
    except gating.Refused as refused:
        raise StepError(str(refused)) from None
    target = wanted if wanted == revisions.BASE else inspected.resolve(wanted) or wanted
    if not reverting:
        await execution.release(str(context.run.id))
    return _plan(context, environment, inspected, report, current, target, reverting)


async def downgrade(context: StepContext) -> Migrated:
    plan = earlier(context, Planned)
    if not plan.pending:
        return Migrated(applied=[])
    return await _migrate(context, plan, Direction.downgrade)


async def deployed_commit(context: StepContext) -> CheckedOut:
    project, environment = await environment_of(context)
    commit = environment.deployed_commit or await git.head_commit(project.repository)
    if commit is None:
        raise StepError("the project's repository has no commits")
    return CheckedOut(commit=commit)


# Restore


async def backup_before_restore(context: StepContext) -> dict[str, Any]:
    _, environment = await environment_of(context)
    url = database_url(context, environment)
    return await backup(
        context, environment, await revisions.current(url, environment.version_table)
    )


async def restore(context: StepContext) -> dict[str, Any]:
    _, environment = await environment_of(context)
    backup = await repository.get_backup(context.session, context.params(RestoreParams).backup_id)
    if backup is None or backup.environment_id != environment.id:
        raise StepError("the backup to restore is gone")
    url = database_url(context, environment)
    await context.progress(10, f"restoring backup {backup.id} (revision {backup.revision})")
    await backups.restore(url, Path(backup.location), backup.sha256)
    return {"backup_id": str(backup.id), "revision": backup.revision}


async def record_restore(context: StepContext) -> dict[str, Any]:
    _, environment = await environment_of(context)
    url = database_url(context, environment)
    backup = await repository.get_backup(context.session, context.params(RestoreParams).backup_id)
    assert backup is not None
    history.record_restore(context.session, environment, context.run, backup)
    environment.revision = await revisions.current(url, environment.version_table)
    await schema_cache.invalidate(context.redis, environment.id)
    context.run.add_result(revision=environment.revision)
    return {"revision": environment.revision}


UPGRADE = Plan(
    params=UpgradeParams,
    steps=[
        (CHECKOUT, resolve_commit),
        (DEPENDENCIES, prepare_environment),
        (PREFLIGHT, preflight),
        (BACKUP, take_backup),
        (MIGRATE, migrate),
        (RECORD, record),
    ],
    exclusive=migration_lock,
    still_working=migrator_alive,
    not_before=migrations_service.deploy_window,
)

DOWNGRADE = Plan(
    params=DowngradeParams,
    steps=[
        (CHECKOUT, deployed_commit),
        (DEPENDENCIES, prepare_environment),
        (PREFLIGHT, downgrade_preflight),
        (BACKUP, take_backup),
        (MIGRATE, downgrade),
        (RECORD, record),
    ],
    exclusive=migration_lock,
    still_working=migrator_alive,
)

RESTORE = Plan(
    params=RestoreParams,
    steps=[(BACKUP, backup_before_restore), (RESTORE_BACKUP, restore), (RECORD, record_restore)],
    exclusive=migration_lock,
    still_working=migrator_alive,
)
