"""Adopting an existing service: its repository and databases come under Hatchery's
migrations, backups and schema API. Adoption reads; it creates and drops nothing in the
adopted databases (it writes only a version stamp, and only when asked to)."""

import asyncio
import shutil
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from hatchery import crypto, db, git, redaction
from hatchery.config import Settings
from hatchery.migrations import history, repository
from hatchery.migrations.models import Direction
from hatchery.migrator import execution, locking, revisions, venvs, workspace
from hatchery.migrator.revisions import History
from hatchery.migrator.runner import ChildFailed, Hooks
from hatchery.migrator.sandbox import Sandbox
from hatchery.plans import common
from hatchery.plans import delete as deletion
from hatchery.plans import initialize as initialization
from hatchery.projects import admission, provisioning
from hatchery.projects import service as projects
from hatchery.projects.models import Project
from hatchery.projects.params import DeleteParams, InitializeParams
from hatchery.projects.repository import load_project
from hatchery.runs.executor import Plan, StepContext, StepFailed, StepOutput

UNREACHABLE = (
    "cannot connect: check the host, port, database name and credentials, and that the "
    "server accepts connections from Hatchery"
)
CONNECT_SECONDS = 10

log = structlog.get_logger("hatchery.adoption")


class AdoptionError(StepFailed):
    pass


VERIFY_REPOSITORY, VERIFY_DATABASES = "verify_repository", "verify_databases"


class VerifiedRepository(StepOutput):
    step = VERIFY_REPOSITORY
    commit: str
    alembic_ini: str | None


class VerifiedDatabases(StepOutput):
    step = VERIFY_DATABASES
    environments: dict[str, dict[str, Any]] = {}  # what each environment was found holding


async def fetch(project: Project, settings: Settings) -> None:
    """Bring the local mirror up to date with the adopted repository (checked again: the
    rules may have changed since the project was adopted)."""
    assert project.origin_url is not None
    mirror = project.repository
    try:
        origin = admission.check_repository(
            crypto.decrypt(project.origin_url, settings.encryption_secret), settings
        )
    except admission.Refused as exc:
        raise AdoptionError(f"the repository URL is refused: {exc}") from None
    if not (mirror / "HEAD").exists():
        await git.init_bare(mirror)
    try:
        await git.fetch(
            mirror, origin, settings.git_timeout_seconds, settings.repository_file_root is not None
        )
    except git.GitError as exc:
        raise AdoptionError(str(exc)) from None


async def commit_of(context: StepContext, project: Project) -> str:
    """The adopted commit: verify_repository's, or (resuming after it) its branch's head."""
    verified = context.output(VerifiedRepository)
    commit = (
        verified.commit
        if verified is not None
        else await git.head_commit(project.repository, project.branch or "main")
    )
    if commit is None:
        raise AdoptionError(f"branch {project.branch} is not in {project.repository_url}")
    return str(commit)


async def verify_repository(context: StepContext) -> VerifiedRepository:
    project = await load_project(context.session, context.run)
    await fetch(project, context.settings)
    commit = await commit_of(context, project)
    found = await workspace.open_workspace(
        context.settings, Sandbox.from_settings(context.settings, 0), str(context.run.id),
        project.repository, commit,
    )  # fmt: skip
    try:
        project.alembic_ini = workspace.find_alembic_ini(found.checkout, project.alembic_ini)
    except workspace.NoAlembicConfig as exc:
        raise AdoptionError(str(exc)) from None
    return VerifiedRepository(commit=commit, alembic_ini=project.alembic_ini)


async def prepared(context: StepContext) -> execution.Prepared:
    project = await load_project(context.session, context.run)
    return await common.prepared(context, project, await commit_of(context, project))


async def prepare_environment(context: StepContext) -> dict[str, Any]:
    """The project's own Python dependencies, built with uv (or found built)."""
    return (await prepared(context)).summary()


PRIVILEGES = text(
    """
    SELECT current_user, current_schema(),
           coalesce(has_schema_privilege(current_schema(), 'CREATE'), false),
           array(SELECT n.nspname || '.' || c.relname
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'm', 'S')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_%'
                   AND NOT has_table_privilege(c.oid, 'SELECT')
                 ORDER BY 1 LIMIT 5),
           (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version'
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_%')
    """
)


async def verify_databases(context: StepContext) -> VerifiedDatabases:
    project = await load_project(context.session, context.run)
    settings = context.settings
    control_cluster = await admission.cluster_of(await context.session.connection())
    found: dict[str, Any] = {}
    for done, environment in enumerate(project.environments):
        await context.progress(100 * done / len(project.environments), environment.name)
        url = provisioning.connection_url(environment, settings.encryption_secret)
        try:
            await admission.check_database(make_url(url), settings)
        except admission.Refused as exc:
            raise AdoptionError(f"{environment.name}: {exc}") from None
        try:
            async with db.connection(url, connect_args={"timeout": CONNECT_SECONDS}) as conn:
                await admission.check_connected(
                    conn, environment.database_name, control_cluster, settings
                )
                await conn.execute(text("SET TRANSACTION READ ONLY"))
                user, schema, can_create, unreadable, tables = (
                    await conn.execute(PRIVILEGES)
                ).one()
                await conn.rollback()
        except admission.Refused as exc:
            raise AdoptionError(f"{environment.name}: {exc}") from None
        except (DBAPIError, OSError, TimeoutError) as exc:
            # One answer for closed, filtered, unknown and non-PostgreSQL hosts and bad
            # credentials alike: the api is no port scanner. The operator's log has it all.
            log.warning("adopted_database_unreachable", environment=environment.name,
                        error=redaction.redact(str(getattr(exc, "orig", exc)), [url]))  # fmt: skip
            raise AdoptionError(f"{environment.name}: {UNREACHABLE}") from None
        if not can_create:
            raise AdoptionError(
                f"{environment.name}: role {user} may not CREATE in schema {schema}, "
                "which migrating needs"
            )
        if unreadable:
            raise AdoptionError(
                f"{environment.name}: role {user} cannot read {', '.join(unreadable)}, "
                "which pg_dump backups need"
            )
        found[environment.name] = await _baseline_of(context, project, url, tables)
    return VerifiedDatabases(environments=found)


async def _baseline_of(
    context: StepContext, project: Project, url: str, tables: int
) -> dict[str, Any]:
    """The environment's revision, read by the project's own env.py from its own version
    table, and whether its history is one the repository has."""
    found = await prepared(context)
    try:
        report = await execution.inspect(context.settings, found, url, context.log, current=True)
    except ChildFailed as failure:
        raise AdoptionError(f"the project's migrations could not be read: {failure}") from None
    inspected = History.from_child(report)
    if len(inspected.heads) != 1:
        heads = ", ".join(inspected.heads)
        raise AdoptionError(f"the migrations have {len(inspected.heads)} heads: {heads}")
    await revisions.remember(
        context.redis, str(project.id), found.workspace.commit, found.digest, inspected
    )
    current = report["current"][0] if report["current"] else None
    return {
        "revision": current,
        "untracked_tables": tables if current is None else 0,
        "version_table": report.get("version_table"),
    }


async def record_baseline(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    found = await prepared(context)
    verified = context.output(VerifiedDatabases)
    seen = verified.environments if verified is not None else {}
    stamp = context.params(InitializeParams).stamp
    inspected = await revisions.recall(
        context.redis, str(project.id), found.workspace.commit, found.digest
    )
    if inspected is None:
        url = provisioning.connection_url(
            project.environments[0], context.settings.encryption_secret
        )
        inspected = History.from_child(
            await execution.inspect(context.settings, found, url, context.log)
        )
    sha256s = {r.revision: r.sha256 for r in inspected.revisions}
    recorded: dict[str, Any] = {}
    for environment in project.environments:
        url = provisioning.connection_url(environment, context.settings.encryption_secret)
        state = seen.get(environment.name) or await _baseline_of(context, project, url, 0)
        revision, untracked = state["revision"], state["untracked_tables"]
        environment.version_table = state.get("version_table")
        if revision is None and untracked and stamp:
            target = inspected.resolve(stamp)
            if target is None:
                raise AdoptionError(f"stamp revision {stamp} is not in the history")
            try:
                done = await execution.migrate(
                    context.settings, found, url, "stamp", target, Hooks(context.log),
                    migrator=locking.migrator_name(environment.database_name),
                )  # fmt: skip
            except ChildFailed as failure:
                raise AdoptionError(f"{environment.name}: stamping failed: {failure}") from None
            environment.version_table = done.get("version_table") or environment.version_table
            revision = target
        if revision is not None and inspected.get(revision) is None:
            raise AdoptionError(
                f"{environment.name} is at revision {revision}, which the repository lacks"
            )
        applied = inspected.upgrade_path(None, revision) if revision else []
        history.record_applied(
            context.session, environment, context.run,
            [{"revision": r, "started_at": 0.0, "duration_ms": 0} for r in applied],
            sha256s, Direction.upgrade,
        )  # fmt: skip
        environment.revision = revision
        environment.deployed_commit = found.workspace.commit
        recorded[environment.name] = {
            "revision": revision,
            "untracked_tables": untracked if revision is None else 0,
        }
    return {"environments": recorded}


async def remove_mirror(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    path = project.repository
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
    await asyncio.to_thread(venvs.forget, context.settings, str(project.id))
    return {"removed": str(path), "kept": projects.KEEPS}


async def forget_backups(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    forgotten = 0
    for environment in project.environments:
        for backup in await repository.backups(context.session, environment.id):
            Path(backup.location).unlink(missing_ok=True)
            await context.session.delete(backup)
            forgotten += 1
    return {"forgotten": forgotten}


async def forget(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    project.origin_url = None
    return await deletion.finalize(context)


PLAN = Plan(
    params=InitializeParams,
    steps=[
        (VERIFY_REPOSITORY, verify_repository),
        ("dependencies", prepare_environment),
        (VERIFY_DATABASES, verify_databases),
        ("record_baseline", record_baseline),
        ("issue_deploy_token", initialization.issue_deploy_token),
        ("finalize", initialization.finalize),
    ],
    resumable=True,
    on_start=initialization.PLAN.on_start,
    on_success=initialization.PLAN.on_success,
    on_failure=initialization.PLAN.on_failure,
)

FORGET = Plan(
    params=DeleteParams,
    steps=[
        ("remove_mirror", remove_mirror),
        ("forget_backups", forget_backups),
        ("revoke_keys", deletion.revoke_keys),
        ("finalize", forget),
    ],
    on_start=deletion.PLAN.on_start,
)
