"""The steps that hatch a project; each is safe to run again after a crash."""

import asyncio
import secrets
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db, git
from hatchery.keys import service as keys
from hatchery.keys.models import Scope
from hatchery.migrations import history
from hatchery.migrations import repository as migrations_repository
from hatchery.migrations.models import Direction
from hatchery.migrator import execution, locking, revisions
from hatchery.migrator.revisions import History
from hatchery.migrator.runner import ChildFailed, Hooks
from hatchery.plans import common
from hatchery.projects import provisioning, repository, templates
from hatchery.projects.models import Environment, ProjectStatus
from hatchery.projects.params import InitializeParams
from hatchery.projects.repository import load_project
from hatchery.runs import service as runs
from hatchery.runs.executor import Plan, StepContext, StepFailed
from hatchery.runs.models import Run


class BaselineError(StepFailed):
    pass


async def create_repository(context: StepContext) -> dict[str, Any]:
    path = (await load_project(context.session, context.run)).repository
    if not (path / "HEAD").exists():
        await git.init_bare(path)
    return {"path": str(path)}


async def render_template(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    path = project.repository
    existing = await git.head_commit(path)
    if existing is not None:
        return {"commit": existing}
    assert project.template is not None
    template = templates.available(context.settings.extra_templates_dir)[project.template]
    with tempfile.TemporaryDirectory(prefix="hatchery-render-") as tmp:
        work = Path(tmp) / project.slug
        await context.progress(10, f"rendering template {template.name}")
        data = {"project_name": project.name, "project_slug": project.slug}
        await asyncio.to_thread(templates.render, template, work, data)
        await context.progress(60, "pushing the first commit")
        commit = await git.commit_tree_and_push(
            work, path, f"Hatch {project.slug} from template {template.name}"
        )
    return {"commit": commit}


async def provision_databases(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    server = context.settings.projects_server_url()
    for done, environment in enumerate(project.environments):
        await context.progress(100 * done / len(project.environments), environment.name)
        password = secrets.token_urlsafe(24)
        await provisioning.provision(
            server, environment.database_name, environment.role_name, password,
            protected=[make_url(context.settings.require_database_url()).database or ""],
        )  # fmt: skip
        url = provisioning.database_url(
            server, environment.database_name, environment.role_name, password
        )
        environment.database_url = provisioning.seal(url, context.settings.encryption_secret)
    return {"databases": [e.database_name for e in project.environments]}


async def prepared(context: StepContext) -> execution.Prepared:
    """The project's files at its first commit and its own environment, for the steps
    that run its migrations (found again, not rebuilt, by the later ones)."""
    project = await load_project(context.session, context.run)
    commit = await git.head_commit(project.repository)
    assert commit is not None
    return await common.prepared(context, project, commit)


async def prepare_environment(context: StepContext) -> dict[str, Any]:
    """The project's own Python dependencies, built with uv (or found built)."""
    return (await prepared(context)).summary()


async def apply_baseline(context: StepContext) -> dict[str, Any]:
    """Each environment's migrations to head, and their history rows committed right
    after, environment by environment: a retry after a crash finds both whole (and
    records the history of a baseline that landed without it)."""
    project = await load_project(context.session, context.run)
    settings = context.settings
    found = await prepared(context)
    landed: dict[str, str | None] = {}
    for environment in project.environments:
        url = provisioning.connection_url(environment, settings.encryption_secret)
        applied: list[dict[str, Any]] = []

        async def report(
            event: dict[str, Any], env: str = environment.name, applied: list[Any] = applied
        ) -> bool:
            applied.append(event)
            done, total = event["index"], max(event["total"], 1)
            await context.progress(100 * done / total, f"{env}: applied {event['revision']}")
            return True

        try:
            done = await execution.migrate(
                settings, found, url, "upgrade", "head", Hooks(context.log, report),
                migrator=locking.migrator_name(environment.database_name),
            )  # fmt: skip
        except ChildFailed as failure:
            raise BaselineError(f"{environment.name}: {failure}") from None
        version_table = done.get("version_table")
        current = await revisions.current(url, version_table)
        async with context.sessionmaker() as session, db.transaction(session):
            kept = await repository.get_environment(session, project.id, environment.name)
            assert kept is not None
            if not applied and current is not None:
                applied = await _untracked(context, found, url, session, kept, current)
            sha256s = {e["revision"]: e.get("sha256") for e in applied}
            history.record_applied(session, kept, context.run, applied, sha256s, Direction.upgrade)
            kept.version_table, kept.revision = version_table, current
            kept.deployed_commit = found.workspace.commit
        landed[environment.name] = current
    return {"revisions": landed, "commit": found.workspace.commit}


async def _untracked(
    context: StepContext,
    found: execution.Prepared,
    url: str,
    session: AsyncSession,
    environment: Environment,
    current: str,
) -> list[dict[str, Any]]:
    """What an earlier attempt landed but did not record (it died in between)."""
    if migrations_repository.applied(await migrations_repository.records(session, environment.id)):
        return []
    report = await execution.inspect(context.settings, found, url, context.log)
    inspected = History.from_child(report)
    sha256s = {r.revision: r.sha256 for r in inspected.revisions}
    return [
        {"revision": r, "started_at": 0.0, "duration_ms": 0, "sha256": sha256s.get(r)}
        for r in inspected.upgrade_path(None, current)
    ]


async def issue_deploy_token(context: StepContext) -> dict[str, Any]:
    run, settings = context.run, context.settings
    project = await load_project(context.session, run)
    key, token = await keys.create_key(
        context.session,
        settings.key_hash_key,
        name=f"deploy token for {project.slug}",
        scopes=[Scope.deploy],
        project_id=project.id,
    )
    # Committed with the step: the key exists exactly when the run holds its token.
    run.result = {
        **(run.result or {}),
        "deploy_key_id": str(key.id),
        "deploy_token_prefix": key.prefix,
    }
    runs.keep_secret_once(run, "deploy_token", token, settings.encryption_secret)
    return {"key_id": str(key.id), "prefix": key.prefix}


async def finalize(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    project.status = ProjectStatus.active
    project.initialization_error = None
    return {"status": project.status}


async def _succeeded(session: AsyncSession, run: Run) -> None:
    (await load_project(session, run)).initialization_summary = runs.summarize(run)


async def _started(session: AsyncSession, run: Run) -> None:
    (await load_project(session, run)).status = ProjectStatus.initializing


async def _failed(session: AsyncSession, run: Run, error: str) -> None:
    project = await load_project(session, run)
    project.status = ProjectStatus.failed
    project.initialization_error = error
    project.initialization_summary = runs.summarize(run)


PLAN = Plan(
    params=InitializeParams,
    steps=[
        ("create_repository", create_repository),
        ("render_template", render_template),
        ("dependencies", prepare_environment),
        ("provision_databases", provision_databases),
        ("apply_baseline", apply_baseline),
        ("issue_deploy_token", issue_deploy_token),
        ("finalize", finalize),
    ],
    resumable=True,
    on_start=_started,
    on_success=_succeeded,
    on_failure=_failed,
)
