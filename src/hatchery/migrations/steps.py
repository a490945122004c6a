"""The steps of upgrade, downgrade and restore runs. The whole run holds the database's
migration lock, so nothing changes under it between preflight and record."""

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util import await_only

from hatchery import db
from hatchery.config import Settings
from hatchery.migrations import backups, gating, history, locking, repository, runner
from hatchery.migrations.checkout import checkout
from hatchery.migrations.models import Backup, Direction
from hatchery.projects import adoption, git, provisioning
from hatchery.projects.initialization import load_project, repository_path
from hatchery.projects.models import Environment, Project
from hatchery.runs.executor import Plan, StepContext
from hatchery.runs.models import Run
from hatchery.schema import cache as schema_cache


class StepError(RuntimeError):
    pass


async def environment_of(context: StepContext) -> tuple[Project, Environment]:
    project = await load_project(context.session, context.run)
    name = context.run.params["environment"]
    return project, next(e for e in project.environments if e.name == name)


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
    project = await load_project(session, run)
    environment = next(e for e in project.environments if e.name == run.params["environment"])
    url = provisioning.connection_url(environment, settings.encryption_secret)
    return await locking.held(url, environment.database_name)


def _report(context: StepContext) -> runner.OnRevision:
    def report(revision: str, index: int, total: int) -> None:
        await_only(context.progress(100 * index / total, f"{revision} ({index}/{total})"))

    return report


# Upgrade


async def resolve_commit(context: StepContext) -> dict[str, Any]:
    project, _ = await environment_of(context)
    if project.adopted:
        await adoption.fetch(project, context.settings)
    wanted = context.run.params["commit_sha"]
    commit = await git.head_commit(repository_path(project), wanted)
    if commit is None:
        raise StepError(f"commit {wanted} is not in the project's repository")
    async with checkout(project, commit) as scripts:
        heads = scripts.heads()
    return {"commit": commit, "heads": heads}


async def preflight(context: StepContext) -> dict[str, Any]:
    project, environment = await environment_of(context)
    commit = context.output_of("checkout")["commit"]
    url = database_url(context, environment)
    async with checkout(project, commit) as scripts:
        heads = scripts.heads()
        if len(heads) != 1:
            raise StepError(
                f"the migrations at {commit[:12]} have {len(heads)} heads: {', '.join(heads)}"
            )
        wanted = context.run.params.get("target_revision") or heads[0]
        found = scripts.get(wanted)
        if found is None:
            raise StepError(f"target revision {wanted} is not in the history at {commit[:12]}")
        target = found.revision
        current = await runner.current_revision(url)
        _check_unchanged(scripts, await repository.records(context.session, environment.id), commit)
        if not context.run.params.get("force"):
            await gating.check(context.session, project, environment, target)
        if (
            current is not None
            and current != target
            and target in scripts.downgrade_path(current, None)
        ):
            raise StepError(
                f"target {target} is behind the current revision {current}: roll back instead"
            )
        pending = scripts.upgrade_path(current, target) if current != target else []
        sql = scripts.offline_sql(current, target) if pending else ""
    context.run.result = {**(context.run.result or {}), "sql": sql, "pending": pending}
    return {"current": current, "target": target, "pending": pending}


def _check_unchanged(scripts: runner.Scripts, records: Any, commit: str) -> None:
    for revision, record in repository.applied(records).items():
        script = scripts.get(revision)
        if script is None:
            raise StepError(f"revision {revision}, applied here, is missing at {commit[:12]}")
        if record.sha256 and script.sha256 != record.sha256:
            raise StepError(
                f"revision {revision} was changed after it was applied "
                f"({script.path.name}: sha256 {script.sha256[:12]}, applied {record.sha256[:12]})"
            )


async def take_backup(context: StepContext) -> dict[str, Any]:
    if not context.output_of("preflight").get("pending", True):
        return {"skipped": "nothing to migrate"}
    return await _backup(context)


async def _backup(context: StepContext) -> dict[str, Any]:
    project, environment = await environment_of(context)
    settings = context.settings
    revision = await runner.current_revision(database_url(context, environment))
    when = db.utcnow()
    path = backups.location(
        settings.backups_dir, str(project.id), environment.name, when, revision or "base"
    )
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


async def migrate(context: StepContext) -> dict[str, Any]:
    plan = context.output_of("preflight")
    if not plan.get("pending"):
        return {"applied": []}
    return await _migrate(context, plan["target"], Direction.upgrade)


async def _migrate(context: StepContext, target: str, direction: Direction) -> dict[str, Any]:
    project, environment = await environment_of(context)
    commit = context.output_of("checkout")["commit"]
    settings = context.settings
    started = time.time()
    async with checkout(project, commit) as scripts:
        try:
            applied = await runner.migrate(
                database_url(context, environment),
                scripts,
                target,
                downgrade=direction == Direction.downgrade,
                lock_timeout_ms=settings.migration_lock_timeout_ms,
                statement_timeout_ms=settings.migration_statement_timeout_ms,
                on_revision=_report(context),
            )
        except runner.RevisionFailed as failure:
            async with context.sessionmaker() as session:
                failed = scripts.get(failure.revision)
                history.record_failure(
                    session, environment, context.run, failure.revision, direction, started,
                    failure.error, failure.statement, failed.sha256 if failed else None,
                )  # fmt: skip
                await session.commit()
            statement = f"; failing statement: {failure.statement}" if failure.statement else ""
            raise StepError(f"{failure}{statement}") from failure
    return {"applied": history.as_dicts(applied), "target": target}


async def record(context: StepContext) -> dict[str, Any]:
    project, environment = await environment_of(context)
    commit = context.output_of("checkout")["commit"]
    applied = context.output_of("migrate").get("applied", [])
    direction = Direction(context.run.kind)
    async with checkout(project, commit) as scripts:
        history.record_applied(
            context.session, environment, context.run, applied, scripts, direction
        )
    environment.revision = await runner.current_revision(database_url(context, environment))
    await schema_cache.invalidate(context.redis, environment.id)
    if direction == Direction.upgrade:
        environment.deployed_commit = commit
    context.run.result = {**(context.run.result or {}), "revision": environment.revision}
    return {"revision": environment.revision, "applied": [a["revision"] for a in applied]}


# Downgrade


async def downgrade_preflight(context: StepContext) -> dict[str, Any]:
    project, environment = await environment_of(context)
    commit = context.output_of("checkout")["commit"]
    target = context.run.params["target_revision"]
    current = await runner.current_revision(database_url(context, environment))
    async with checkout(project, commit) as scripts:
        if current is None:
            raise StepError("the database has no revision to roll back from")
        _check_unchanged(scripts, await repository.records(context.session, environment.id), commit)
        reverting = gating.revisions_to_revert(scripts, current, target)
        sql = scripts.offline_sql(current, target, downgrade=True) if reverting else ""
    context.run.result = {**(context.run.result or {}), "sql": sql, "reverting": reverting}
    return {"current": current, "target": target, "pending": reverting}


async def downgrade(context: StepContext) -> dict[str, Any]:
    plan = context.output_of("preflight")
    if not plan.get("pending"):
        return {"applied": []}
    return await _migrate(context, plan["target"], Direction.downgrade)


async def deployed_commit(context: StepContext) -> dict[str, Any]:
    project, environment = await environment_of(context)
    commit = environment.deployed_commit or await git.head_commit(repository_path(project))
    if commit is None:
        raise StepError("the project's repository has no commits")
    return {"commit": commit}


# Restore


async def restore(context: StepContext) -> dict[str, Any]:
    _, environment = await environment_of(context)
    backup = await repository.get_backup(context.session, context.run.params["backup_id"])
    if backup is None or backup.environment_id != environment.id:
        raise StepError("the backup to restore is gone")
    url = database_url(context, environment)
    await context.progress(10, f"restoring backup {backup.id} (revision {backup.revision})")
    await backups.restore(url, Path(backup.location), backup.sha256)
    return {"backup_id": str(backup.id), "revision": await runner.current_revision(url)}


async def record_restore(context: StepContext) -> dict[str, Any]:
    _, environment = await environment_of(context)
    environment.revision = await runner.current_revision(database_url(context, environment))
    await schema_cache.invalidate(context.redis, environment.id)
    context.run.result = {**(context.run.result or {}), "revision": environment.revision}
    return {"revision": environment.revision}


UPGRADE = Plan(
    steps=[
        ("checkout", resolve_commit),
        ("preflight", preflight),
        ("backup", take_backup),
        ("migrate", migrate),
        ("record", record),
    ],
    exclusive=migration_lock,
    still_working=migrator_alive,
)

DOWNGRADE = Plan(
    steps=[
        ("checkout", deployed_commit),
        ("preflight", downgrade_preflight),
        ("backup", take_backup),
        ("migrate", downgrade),
        ("record", record),
    ],
    exclusive=migration_lock,
    still_working=migrator_alive,
)

RESTORE = Plan(
    steps=[("backup", _backup), ("restore", restore), ("record", record_restore)],
    exclusive=migration_lock,
    still_working=migrator_alive,
)
