"""Runs a project's Alembic revisions in-process, on a connection Hatchery controls.

Hatchery drives Alembic's `EnvironmentContext` itself instead of running the project's
`env.py`: the whole upgrade is one transaction on our connection, with our timeouts, and
every applied revision is reported as it lands.
"""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# alembic.op and alembic.context are process-wide proxies: two migrations interleaving
# on one event loop would run each other's operations. One at a time per process.
_alembic_in_use = asyncio.Lock()

OnRevision = Callable[[str, int, int], None]


class MigrationError(RuntimeError):
    pass


def find_alembic_ini(tree: Path) -> Path:
    candidates = sorted(p for p in tree.rglob("alembic.ini") if ".git" not in p.parts)
    if len(candidates) != 1:
        found = ", ".join(str(p.relative_to(tree)) for p in candidates) or "none"
        raise MigrationError(f"expected one alembic.ini in the repository, found {found}")
    return candidates[0]


def _config(alembic_ini: Path) -> Config:
    return Config(str(alembic_ini))


def _upgrade(
    connection: Connection, config: Config, target: str, on_revision: OnRevision | None
) -> str | None:
    script = ScriptDirectory.from_config(config)
    pending: list[str] = []

    def plan(rev: Any, context: MigrationContext) -> Any:
        revisions = script._upgrade_revs(target, rev)
        pending.extend(r.revision.revision for r in revisions)
        return revisions

    def applied(ctx: MigrationContext, step: Any, heads: Any, run_args: Any) -> None:
        if on_revision is not None:
            revision = step.up_revision_id
            on_revision(revision, pending.index(revision) + 1, len(pending))

    with EnvironmentContext(config, script, fn=plan, destination_rev=target) as env:
        env.configure(
            connection=connection,
            transactional_ddl=True,
            transaction_per_migration=False,
            on_version_apply=applied,
        )
        with env.begin_transaction():
            env.run_migrations()
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(
    database_url: str,
    alembic_ini: Path,
    target: str = "head",
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    on_revision: OnRevision | None = None,
) -> str | None:
    """Upgrade to `target` in one transaction: it lands whole or not at all."""
    config = _config(alembic_ini)
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with _alembic_in_use, engine.connect() as conn:
            await conn.execute(text(f"SET lock_timeout = {int(lock_timeout_ms)}"))
            await conn.execute(text(f"SET statement_timeout = {int(statement_timeout_ms)}"))
            revision = await conn.run_sync(_upgrade, config, target, on_revision)
            await conn.commit()
            return revision
    finally:
        await engine.dispose()
