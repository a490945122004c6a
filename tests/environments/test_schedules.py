"""Refresh schedules: however many workers look at once, one run per tick."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchery import db, plans, queue
from hatchery.embedded import EmbeddedRedis
from hatchery.environments import service
from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.runs.models import Run, RunKind, RunStatus, RunTrigger


@pytest.fixture
async def own_queue(redis_server: EmbeddedRedis) -> AsyncIterator[queue.Queue]:
    # A Redis database no worker of the suite reads: the runs made here are never executed.
    client = queue.connect(redis_server.url[:-1] + "3")
    yield client
    await queue.close(client)


async def test_a_due_schedule_starts_one_refresh_however_many_workers_look(
    engine: AsyncEngine, own_queue: queue.Queue
) -> None:
    plans.register()  # as a worker does at start
    sessionmaker = db.create_sessionmaker(engine, own_queue)
    tick = db.utcnow() - timedelta(seconds=1)
    async with sessionmaker() as session, db.transaction(session):
        project = Project(
            slug=f"sched-{uuid.uuid4().hex[:6]}", name="s", template="fastapi-service",
            status=ProjectStatus.active, repository_url="file:///none", repository_path="/none",
        )  # fmt: skip
        session.add(project)
        await session.flush()
        for position, name in enumerate(("staging", "production")):
            session.add(
                Environment(
                    project_id=project.id,
                    name=name,
                    position=position,
                    database_name=f"{name}_db",
                    role_name=f"{name}_role",
                )
            )
        await session.flush()
        staging = await session.scalar(
            select(Environment).where(
                Environment.project_id == project.id, Environment.name == "staging"
            )
        )
        assert staging is not None
        staging.refresh_schedule = {"from": "production", "at": "daily 03:00 Europe/Berlin"}
        staging.refresh_next_at = tick
    try:
        started = await asyncio.gather(*(service.start_scheduled(sessionmaker) for _ in range(4)))
        assert sum(started) == 1
        async with sessionmaker() as session:
            runs = (await session.scalars(select(Run).where(Run.project_id == project.id))).all()
            assert [(r.kind, r.trigger, r.status) for r in runs] == [
                (RunKind.refresh, RunTrigger.schedule, RunStatus.queued)
            ]
            assert runs[0].params["source"] == "production"
            assert runs[0].idempotency_key == f"schedule:{staging.id}:{tick.isoformat()}"
            again = await session.get(Environment, staging.id)
            assert again is not None and again.refresh_next_at is not None
            assert db.utcnow() < again.refresh_next_at < db.utcnow() + timedelta(days=1)
            assert again.refresh_next_at.astimezone(ZoneInfo("Europe/Berlin")).time() == time(3)
        assert await service.start_scheduled(sessionmaker) == 0  # not due again yet
    finally:
        async with sessionmaker() as session, db.transaction(session):
            await session.execute(delete(Project).where(Project.id == project.id))
