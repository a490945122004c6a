"""Running a project's Alembic commands for Hatchery: its files at a commit, its own
Python environment, and a child process that runs the commands (runner.py)."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatchery.config import Settings
from hatchery.migrator import revisions, venvs, workspace
from hatchery.migrator.runner import Conversation, Hooks, LocalRunner, Runner, Site, request, run
from hatchery.migrator.sandbox import Sandbox

Log = Callable[[str], Awaitable[None]]
LOG_LINES = 1000


@dataclass(frozen=True)
class Prepared:
    """Everything a child needs: the files, where the Alembic setup is, the interpreter."""

    workspace: workspace.Workspace
    site: Site
    python: Path
    source: str
    built_ms: int
    digest: str  # with the commit, the key of the history it reads

    def summary(self) -> dict[str, Any]:
        """A dependencies step's output."""
        return {
            "python": str(self.python),
            "declared_in": self.source,
            "alembic_ini": self.site.ini,
            "duration_ms": self.built_ms,
        }


def site_of(chosen: dict[str, Any], ini: str) -> Site:
    return Site(
        ini=ini,
        section=chosen.get("section", "alembic"),
        env_py=chosen.get("env_py", True),
        version_table=chosen.get("version_table"),
        version_table_schema=chosen.get("version_table_schema"),
        variables=chosen.get("variables", {}),
    )


def runner(settings: Settings) -> Runner:
    """Where children run: on this machine (the one runner there is; README says how the
    same child would run in the project's own image)."""
    return LocalRunner(Sandbox.from_settings(settings, settings.migration_timeout_seconds))


def capped(log: Log) -> Log:
    """At most LOG_LINES lines of a child's output reach the event stream."""
    count = 0

    async def capped_log(line: str) -> None:
        nonlocal count
        count += 1
        if count <= LOG_LINES:
            await log(line[:2000])
        elif count == LOG_LINES + 1:
            await log(f"... (more than {LOG_LINES} lines: the rest is not shown)")

    return capped_log


@dataclass(frozen=True)
class Source:
    """Where a project's migrations are, and how its authors run them."""

    project_id: str
    repository: Path
    alembic_ini: str | None  # the project's choice; found in the checkout when None
    chosen: dict[str, Any]  # migration settings: section, env_py, requirements, ...


async def prepare(settings: Settings, key: str, source: Source, commit: str, log: Log) -> Prepared:
    """The project's files at `commit` (once per key) and its environment (once per lock,
    across runs)."""
    building = Sandbox.from_settings(settings, settings.venv_build_timeout_seconds)
    found = await workspace.open_workspace(settings, building, key, source.repository, commit)
    ini = workspace.find_alembic_ini(found.checkout, source.alembic_ini)
    site = site_of(source.chosen, ini)
    requirements = source.chosen.get("requirements")
    python = venvs.base_python(settings, building)
    version = await venvs.version_of(python)
    declared = venvs.declared(
        found.checkout, (found.checkout / ini).parent, requirements, f"{python} {version}"
    )
    venvs.check_python(declared, version)
    started = time.monotonic()
    builder = venvs.Builder(settings, building, capped(log))
    interpreter = await builder.ensure(source.project_id, declared, python, found.path)
    built_ms = round((time.monotonic() - started) * 1000)
    digest = revisions.site_digest(source.alembic_ini, source.chosen)
    return Prepared(found, site, interpreter, declared.kind, built_ms, digest)


async def inspect(
    settings: Settings, prepared: Prepared, database_url: str, log: Log, **fields: Any
) -> dict[str, Any]:
    """Revisions and heads; with `current=True` the database's revision; with `sql=True`
    and a `target`, the offline SQL from there (best effort)."""
    asked = request("inspect", database_url, prepared.site, settings, **fields)
    return await run(
        runner(settings), prepared.python, prepared.workspace, prepared.site, asked,
        Hooks(capped(log)),
    )  # fmt: skip


async def migrate(
    settings: Settings,
    prepared: Prepared,
    database_url: str,
    command: str,
    target: str,
    hooks: Hooks,
    *,
    migrator: str,
    per_migration: bool | None = None,
) -> dict[str, Any]:
    """`per_migration` None: the child decides (one transaction unless a pending revision
    commits part of itself). `migrator` names every connection it opens (the lock's
    holder ends a dead migrator's leftovers by that name)."""
    asked = request(
        command, database_url, prepared.site, settings,
        target=target, per_migration=per_migration, application_name=migrator,
    )  # fmt: skip
    hooks.on_log = capped(hooks.on_log)
    return await run(
        runner(settings), prepared.python, prepared.workspace, prepared.site, asked, hooks
    )


# A migration's child reports its plan in preflight, then waits (through the backup) for
# the migrate step to say go: one child, one load of the project's code, per migration.
_waiting: dict[str, Conversation] = {}


async def plan(
    settings: Settings,
    prepared: Prepared,
    database_url: str,
    command: str,
    target: str,
    log: Log,
    key: str,
    migrator: str,
) -> dict[str, Any]:
    """Start the migration's child: it reports revisions, heads, the current revision and
    the offline SQL to `target`, and waits, kept under `key`."""
    await release(key)
    asked = request(
        command, database_url, prepared.site, settings,
        target=target, plan=True, current=True, sql=True, application_name=migrator,
    )  # fmt: skip
    child = await runner(settings).start(
        prepared.python, prepared.workspace, prepared.site, asked, Hooks(capped(log))
    )
    planned = await child.until("planned")
    _waiting[key] = child
    return planned


async def proceed(key: str, hooks: Hooks, **answer: Any) -> dict[str, Any] | None:
    """Tell the waiting child to go; its final report (None when no child waits)."""
    child = _waiting.pop(key, None)
    if child is None:
        return None
    child.hooks = Hooks(capped(hooks.on_log), hooks.on_revision, hooks.on_commit)
    try:
        await child.answer(**{"continue": True, **answer})
        done: dict[str, Any] = await child.until("done")
        return done
    finally:
        await child.close()


async def release(key: str) -> None:
    """End a child that waits under `key`, if one does (its run ends without it)."""
    child = _waiting.pop(key, None)
    if child is not None:
        await child.close()


async def end(settings: Settings, key: str) -> None:
    """What a run leaves behind: a waiting child, its workspace."""
    await release(key)
    await asyncio.to_thread(workspace.remove, settings, key)
