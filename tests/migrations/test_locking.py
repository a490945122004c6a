"""The migration lock, on real PostgreSQL: a waiter outlives the end of its connection."""

import asyncio

from sqlalchemy import text

from hatchery import db
from hatchery.embedded import EmbeddedPostgres
from hatchery.migrator import locking


async def test_a_waiter_whose_connection_is_ended_waits_on_and_takes_the_lock(
    postgres: EmbeddedPostgres,
) -> None:
    name = "locking_waiter"
    postgres.psql("postgres", f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")
    database_url = postgres.url(name)
    waiting = asyncio.Event()
    taken: list[str] = []

    async def waiter() -> None:
        async def on_wait() -> None:
            waiting.set()

        async with locking.exclusive(database_url, name, wait_seconds=30, on_wait=on_wait):
            taken.append("waiter")

    async with locking.exclusive(database_url, name, wait_seconds=5):
        task = asyncio.create_task(waiter())
        await asyncio.wait_for(waiting.wait(), 10)
        # What a refresh's swap does to every session of the database it replaces.
        async with db.connection(database_url, isolation_level="AUTOCOMMIT") as admin:
            ended = await admin.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')"
                )
            )
        assert ended == 1
        await asyncio.sleep(0.5)
        assert not task.done() and taken == []
    await asyncio.wait_for(task, 10)
    assert taken == ["waiter"]
