"""One migrator per database: a session-level advisory lock on a connection of its own,
taken with pg_try_advisory_lock and polled, never a blocking wait (a blocked waiter can
deadlock with CREATE INDEX CONCURRENTLY in the migration it waits for)."""

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from hatchery import db
from hatchery.failures import Failure

POLL_SECONDS = 0.1
log = structlog.get_logger("hatchery.migrations")


class LockTimeout(Failure):
    pass


def lock_key(database_name: str) -> int:
    digest = hashlib.sha256(f"hatchery:migrate:{database_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migrator_name(database_name: str) -> str:
    """The application_name every connection of a migration of this database carries."""
    return f"hatchery-migrator-{lock_key(database_name) & (2**64 - 1):016x}"


LEFTOVERS = text(
    """
    SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = :name
      AND pid <> pg_backend_pid()
    """
)
LEFTOVER_WAIT_SECONDS = 30


async def end_leftovers(conn: AsyncConnection, database_name: str) -> int:
    """End the sessions an earlier migrator of this database left behind (its worker died
    mid-statement, and its backend ran on without the lock), and wait until they are gone:
    no two sessions ever change one database at once."""
    name = migrator_name(database_name)
    ended = len((await conn.execute(LEFTOVERS, {"name": name})).all())
    if ended:
        log.warning("migration_leftovers_ended", database=database_name, sessions=ended)
    deadline = time.monotonic() + LEFTOVER_WAIT_SECONDS
    while ended and (await conn.execute(LEFTOVERS, {"name": name})).first() is not None:
        if time.monotonic() > deadline:
            raise LockTimeout(f"a leftover migration of {database_name} would not end")
        await asyncio.sleep(POLL_SECONDS)
    return ended


HELD = text(
    """
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 1
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND classid::bigint = (:key >> 32) & 4294967295 AND objid::bigint = :key & 4294967295
    )
    """
)


async def held(database_url: str, database_name: str) -> bool:
    """Whether some session holds the database's migration lock right now (a migrator
    that is alive, whatever its heartbeat says). False when the database is unreachable."""
    try:
        async with db.connection(database_url, connect_args={"timeout": 10}) as conn:
            return bool(await conn.scalar(HELD, {"key": lock_key(database_name)}))
    except (OSError, TimeoutError, DBAPIError):
        return False


@contextlib.asynccontextmanager
async def exclusive(
    database_url: str,
    database_name: str,
    *,
    wait_seconds: float,
    on_wait: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[None]:
    """Hold the database's migration lock for the body. If this process dies, the
    connection closes and PostgreSQL releases the lock. A waiter whose connection is
    ended (a refresh swapping the database in, a restart) waits on a new one."""
    key = lock_key(database_name)
    deadline = time.monotonic() + wait_seconds
    waited = False
    while True:
        async with db.connection(database_url, isolation_level="AUTOCOMMIT") as conn:
            try:
                while not await conn.scalar(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
                ):
                    if time.monotonic() > deadline:
                        raise LockTimeout(
                            f"another migration of {database_name} held its lock for "
                            f"{wait_seconds:g} s"
                        )
                    if not waited and on_wait is not None:
                        await on_wait()
                    waited = True
                    await asyncio.sleep(POLL_SECONDS)
            except DBAPIError as exc:
                if not db.unavailable(exc) or time.monotonic() > deadline:
                    raise
                log.warning("migration_lock_wait_reconnecting", database=database_name)
                continue
            try:
                await end_leftovers(conn, database_name)
                yield
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            return
