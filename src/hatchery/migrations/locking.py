"""One migrator per database: a session-level advisory lock on a connection of its own,
taken with pg_try_advisory_lock and polled, never a blocking wait (a blocked waiter can
deadlock with CREATE INDEX CONCURRENTLY in the migration it waits for)."""

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

POLL_SECONDS = 0.1


class LockTimeout(RuntimeError):
    pass


def lock_key(database_name: str) -> int:
    digest = hashlib.sha256(f"hatchery:migrate:{database_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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
    engine = create_async_engine(database_url, poolclass=NullPool, connect_args={"timeout": 10})
    try:
        async with engine.connect() as conn:
            return bool(await conn.scalar(HELD, {"key": lock_key(database_name)}))
    except (OSError, TimeoutError, DBAPIError):
        return False
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def exclusive(
    database_url: str,
    database_name: str,
    *,
    wait_seconds: float,
    on_wait: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[None]:
    """Hold the database's migration lock for the body. If this process dies, the
    connection closes and PostgreSQL releases the lock."""
    key = lock_key(database_name)
    engine = create_async_engine(database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            deadline = time.monotonic() + wait_seconds
            waited = False
            while not await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}):
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"another migration of {database_name} held its lock for {wait_seconds:g} s"
                    )
                if not waited and on_wait is not None:
                    await on_wait()
                waited = True
                await asyncio.sleep(POLL_SECONDS)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        await engine.dispose()
