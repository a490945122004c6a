"""The steps that delete a project: its databases and roles, its repository, its keys."""

import asyncio
import shutil
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db, invalidation
from hatchery.keys import repository as keys_repository
from hatchery.migrator import venvs
from hatchery.projects import provisioning
from hatchery.projects.models import ProjectStatus
from hatchery.projects.params import DeleteParams
from hatchery.projects.repository import load_project
from hatchery.runs.executor import Plan, StepContext
from hatchery.runs.models import Run


async def drop_databases(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    for done, environment in enumerate(project.environments):
        await context.progress(100 * done / len(project.environments), environment.name)
        await provisioning.drop(context.settings.projects_server_url(), environment)
    return {"dropped": [e.database_name for e in project.environments]}


async def remove_repository(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    path = project.repository
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
    await asyncio.to_thread(venvs.forget, context.settings, str(project.id))
    return {"removed": str(path)}


async def revoke_keys(context: StepContext) -> dict[str, Any]:
    revoked = await keys_repository.revoke_project_keys(
        context.session, context.run.project_id, db.utcnow()
    )
    db.after_commit(
        context.session, lambda: invalidation.announce(context.redis, invalidation.KEYS)
    )
    return {"revoked": revoked}


async def finalize(context: StepContext) -> dict[str, Any]:
    project = await load_project(context.session, context.run)
    project.status = ProjectStatus.deleted
    for environment in project.environments:
        environment.database_url = None
        environment.revision = None
    db.after_commit(
        context.session, lambda: invalidation.announce(context.redis, invalidation.ENVIRONMENTS)
    )
    return {"status": project.status}


async def _started(session: AsyncSession, run: Run) -> None:
    (await load_project(session, run)).status = ProjectStatus.deleting


PLAN = Plan(
    params=DeleteParams,
    steps=[
        ("drop_databases", drop_databases),
        ("remove_repository", remove_repository),
        ("revoke_keys", revoke_keys),
        ("finalize", finalize),
    ],
    on_start=_started,
)
