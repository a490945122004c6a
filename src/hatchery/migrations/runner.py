"""Runs a project's Alembic revisions in-process, on a connection Hatchery controls.

Hatchery drives Alembic's `EnvironmentContext` itself instead of running the project's
`env.py`: the whole change is one transaction on our connection, with our timeouts, and
every revision is reported as it lands.
"""

import ast
import asyncio
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# alembic.op and alembic.context are process-wide proxies: two migrations interleaving
# on one event loop would run each other's operations. One at a time per process.
_alembic_in_use = asyncio.Lock()

OnRevision = Callable[[str, int, int], None]


class MigrationError(RuntimeError):
    pass


class RevisionFailed(MigrationError):
    def __init__(self, revision: str, error: str, statement: str | None, applied: list["Applied"]):
        super().__init__(f"revision {revision} failed: {error}")
        self.revision, self.error, self.statement, self.applied = (
            revision,
            error,
            statement,
            applied,
        )


@dataclass(frozen=True)
class Applied:
    revision: str
    started_at: float
    duration_ms: int


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: Path
    sha256: str
    downgradable: bool


def find_alembic_ini(tree: Path, configured: str | None = None) -> Path:
    """The repository's alembic.ini: where the project says, or the only one there is."""
    if configured:
        path = (tree / configured).resolve()
        if not path.is_file() or not path.is_relative_to(tree.resolve()):
            raise MigrationError(f"no alembic.ini at {configured} in the repository")
        return path
    candidates = sorted(p for p in tree.rglob("alembic.ini") if ".git" not in p.parts)
    if len(candidates) != 1:
        found = ", ".join(str(p.relative_to(tree)) for p in candidates) or "none"
        raise MigrationError(f"expected one alembic.ini in the repository, found {found}")
    return candidates[0]


def normalized_sha256(path: Path) -> str:
    """The file's hash, blind to line endings and trailing whitespace."""
    lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
    normalized = "\n".join(line.rstrip() for line in lines).strip("\n")
    return hashlib.sha256(normalized.encode()).hexdigest()


def _downgradable(path: Path) -> bool:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == "downgrade":
            body = [
                s
                for s in node.body
                if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                and not isinstance(s, ast.Pass)
            ]
            raises = any(
                isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s) for s in body
            )
            return bool(body) and not raises
    return False


class Scripts:
    """The migrations of one checkout."""

    def __init__(self, alembic_ini: Path, root: Path | None = None) -> None:
        self.alembic_ini = alembic_ini
        # Where alembic.ini sits in the repository it was checked out from.
        self.alembic_ini_path = str(alembic_ini.relative_to(root)) if root else alembic_ini.name
        self.config = Config(str(alembic_ini))
        self.script = ScriptDirectory.from_config(self.config)

    def heads(self) -> list[str]:
        return list(self.script.get_heads())

    def _revision(self, script: Script) -> Revision:
        path = Path(script.path)
        down = script.down_revision
        downs = (down,) if isinstance(down, str) else tuple(down or ())
        return Revision(
            revision=script.revision,
            down_revisions=downs,
            message=(script.doc or "").strip(),
            path=path,
            sha256=normalized_sha256(path),
            downgradable=_downgradable(path),
        )

    def history(self) -> list[Revision]:
        """Every revision, oldest first."""
        return [self._revision(s) for s in reversed(list(self.script.walk_revisions()))]

    def get(self, revision: str) -> Revision | None:
        try:
            script = self.script.get_revision(revision)
        except Exception:
            return None
        return self._revision(script) if script is not None else None

    def upgrade_path(self, current: str | None, target: str) -> list[str]:
        """Revisions an upgrade from `current` to `target` applies, oldest first."""
        return [
            s.revision
            for s in reversed(list(self.script.iterate_revisions(target, current or "base")))
        ]

    def downgrade_path(self, current: str, target: str | None) -> list[str]:
        """Revisions a downgrade from `current` to `target` reverts, newest first."""
        return [s.revision for s in self.script.iterate_revisions(current, target or "base")]

    def offline_sql(self, current: str | None, target: str, downgrade: bool = False) -> str:
        buffer = io.StringIO()

        def plan(rev: Any, context: MigrationContext) -> Any:
            if downgrade:
                return self.script._downgrade_revs(target, rev)
            return self.script._upgrade_revs(target, rev)

        with EnvironmentContext(
            self.config,
            self.script,
            fn=plan,
            as_sql=True,
            starting_rev=current,
            destination_rev=target,
        ) as env:
            env.configure(
                dialect_name="postgresql",
                output_buffer=buffer,
                literal_binds=True,
                transactional_ddl=True,
                transaction_per_migration=False,
            )
            with env.begin_transaction():
                env.run_migrations()
        return buffer.getvalue()


def _migrate(
    connection: Connection,
    scripts: Scripts,
    target: str,
    downgrade: bool,
    on_revision: OnRevision | None,
) -> list[Applied]:
    context = MigrationContext.configure(connection)
    current = context.get_current_revision()
    path = (
        scripts.downgrade_path(current, target)
        if downgrade and current
        else scripts.upgrade_path(current, target)
    )
    applied: list[Applied] = []
    mark = time.time()

    def plan(rev: Any, context: MigrationContext) -> Any:
        if downgrade:
            return scripts.script._downgrade_revs(target, rev)
        return scripts.script._upgrade_revs(target, rev)

    def landed(ctx: MigrationContext, step: Any, heads: Any, run_args: Any) -> None:
        nonlocal mark
        revision = step.up_revision_id
        now = time.time()
        applied.append(Applied(revision, mark, round((now - mark) * 1000)))
        mark = now
        if on_revision is not None:
            on_revision(revision, len(applied), len(path))

    with EnvironmentContext(scripts.config, scripts.script, fn=plan, destination_rev=target) as env:
        env.configure(
            connection=connection,
            transactional_ddl=True,
            transaction_per_migration=False,
            on_version_apply=landed,
        )
        try:
            with env.begin_transaction():
                env.run_migrations()
        except DBAPIError as exc:
            failing = path[len(applied)] if len(applied) < len(path) else "unknown"
            raise RevisionFailed(failing, str(exc.orig), exc.statement, applied) from exc
        except Exception as exc:
            failing = path[len(applied)] if len(applied) < len(path) else "unknown"
            raise RevisionFailed(failing, str(exc), None, applied) from exc
    return applied


async def migrate(
    database_url: str,
    scripts: Scripts,
    target: str,
    *,
    downgrade: bool = False,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    on_revision: OnRevision | None = None,
) -> list[Applied]:
    """Upgrade (or downgrade) to `target` in one transaction: it lands whole or not at all."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with _alembic_in_use, engine.connect() as conn:
            await conn.execute(text(f"SET lock_timeout = {int(lock_timeout_ms)}"))
            await conn.execute(text(f"SET statement_timeout = {int(statement_timeout_ms)}"))
            applied = await conn.run_sync(_migrate, scripts, target, downgrade, on_revision)
            await conn.commit()
            return applied
    finally:
        await engine.dispose()


async def stamp(database_url: str, scripts: Scripts, revision: str) -> None:
    """Record `revision` in the version table without running anything."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with _alembic_in_use, engine.connect() as conn:
            await conn.run_sync(
                lambda c: MigrationContext.configure(c).stamp(scripts.script, revision)
            )
            await conn.commit()
    finally:
        await engine.dispose()


async def current_revision(database_url: str) -> str | None:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await engine.dispose()
