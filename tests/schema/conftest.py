import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres
from hatchery.keys.models import Scope
from hatchery.projects import provisioning
from hatchery.projects.models import Environment, Project, ProjectStatus
from tests.conftest import make_key

FIXTURE = Path(__file__).with_name("fixture.sql")


@pytest.fixture(scope="session")
def schema_database(postgres: EmbeddedPostgres) -> str:
    """A database with every kind of object the schema API describes."""
    postgres.psql("postgres", "CREATE DATABASE schema_fixture")
    postgres.psql("schema_fixture", FIXTURE.read_text())
    return "schema_fixture"


@pytest.fixture
async def schema_project(
    session: AsyncSession, settings: Settings, postgres: EmbeddedPostgres, schema_database: str
) -> Project:
    return await project_on(session, settings, postgres, schema_database)


async def project_on(
    session: AsyncSession, settings: Settings, postgres: EmbeddedPostgres, schema_database: str
) -> Project:
    """A project whose staging environment is `schema_database`."""
    project = Project(
        slug=f"schema-{uuid.uuid4().hex[:6]}",
        name="schema",
        template="fastapi-service",
        status=ProjectStatus.active,
        repository_url="file:///nonexistent",
        repository_path="/nonexistent",
        environments=[
            Environment(
                name="staging",
                position=0,
                database_name=schema_database,
                role_name="hatchery",
                database_url=provisioning.seal(
                    postgres.url(schema_database), settings.encryption_secret
                ),
            )
        ],
    )
    async with db.transaction(session):
        session.add(project)
    return project


@pytest.fixture
async def schema_token(session: AsyncSession, settings: Settings) -> AsyncIterator[str]:
    _, token = await make_key(session, settings, Scope.schema_read)
    yield token
