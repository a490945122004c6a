import asyncio

from sqlalchemy import inspect

from alembic import command
from hatchery import db
from hatchery.embedded import EmbeddedPostgres


def _tables(url: str) -> set[str]:
    async def read() -> set[str]:
        engine = db.create_engine(url)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        await engine.dispose()
        return names

    return asyncio.run(read())


def test_upgrade_downgrade_upgrade_cycle(postgres: EmbeddedPostgres) -> None:
    postgres.psql("postgres", "CREATE DATABASE migration_cycle")
    url = postgres.url("migration_cycle")

    db.upgrade_control_db(url)
    assert {"api_key", "audit_event"} <= _tables(url)
    db.downgrade_control_db(url, "base")
    assert _tables(url) == {"alembic_version"}
    db.upgrade_control_db(url)
    assert {"api_key", "audit_event"} <= _tables(url)


def test_models_and_migrations_agree(database_url: str) -> None:
    # `alembic check` fails when the models hold a change no revision makes.
    command.check(db.alembic_config(database_url))
