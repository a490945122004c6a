import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from hatchery import db, queue
from hatchery.health.schemas import Check, Readiness


async def _database(state: Any) -> Check:
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return Check(ok=True)


async def _migrations(state: Any) -> Check:
    current = await db.current_control_revision(state.engine)
    if current != state.control_head:
        return Check(
            ok=False, detail=f"control database at {current}, code expects {state.control_head}"
        )
    return Check(ok=True, detail=current)


async def _redis(state: Any) -> Check:
    await state.jobs.ping()
    return Check(ok=True)


async def _worker(state: Any) -> Check:
    if await queue.worker_alive(state.jobs):
        return Check(ok=True)
    return Check(ok=False, detail="no worker heartbeat seen recently")


CHECKS: dict[str, Callable[[Any], Awaitable[Check]]] = {
    "database": _database,
    "migrations": _migrations,
    "redis": _redis,
    "worker": _worker,
}


async def _run(check: Callable[[Any], Awaitable[Check]], state: Any) -> Check:
    try:
        return await asyncio.wait_for(check(state), state.settings.readiness_timeout_seconds)
    except TimeoutError:
        return Check(ok=False, detail="timed out")
    except Exception as exc:
        return Check(ok=False, detail=type(exc).__name__)


async def check(state: Any) -> Readiness:
    results = await asyncio.gather(*(_run(c, state) for c in CHECKS.values()))
    checks = dict(zip(CHECKS, results, strict=True))
    return Readiness(ready=all(c.ok for c in checks.values()), checks=checks)
