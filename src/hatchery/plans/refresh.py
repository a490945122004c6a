"""The steps of a refresh run: an environment's data replaced by another's, masked.

The source is only read (pg_dump). Everything happens in a scratch database until the
swap: the target keeps its data, unmasked data never reaches it, and a failure at any
step (or a worker that dies) leaves it as it was. The run holds the target's migration
lock, so no migration runs beside it."""

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import text

from hatchery import db
from hatchery.environments import masking
from hatchery.environments import service as environments
from hatchery.environments.params import RefreshParams
from hatchery.migrations import repository
from hatchery.migrator import backups, revisions
from hatchery.plans.migrate import (
    StepError,
    backup,
    database_url,
    earlier,
    environment_of,
    migration_lock,
    migrator_alive,
)
from hatchery.projects import provisioning
from hatchery.projects.models import Environment
from hatchery.runs.executor import Plan, StepContext, StepFailed, StepOutput
from hatchery.schema import cache as schema_cache

SOURCE_BACKUP, TARGET_BACKUP, RESTORE, MASK, VERIFY, SWAP, RECORD = (
    "source_backup", "target_backup", "restore", "mask", "verify", "swap", "record"
)  # fmt: skip


class SourceBackup(StepOutput):
    step = SOURCE_BACKUP
    backup_id: uuid.UUID
    revision: str | None = None
    picked: bool = False


class Restored(StepOutput):
    step = RESTORE
    rows: dict[str, int]


class MaskedColumns(StepOutput):
    step = MASK
    columns: list[dict[str, Any]]


async def _source(context: StepContext) -> Environment:
    project, _ = await environment_of(context)
    source = project.environment(context.params(RefreshParams).source)
    assert source is not None  # environments are never renamed or removed
    return source


async def source_backup(context: StepContext) -> SourceBackup:
    """The backup asked for (checked against its recorded sha256), or a new one."""
    source = await _source(context)
    wanted = context.params(RefreshParams).backup_id
    if wanted is not None:
        found = await repository.get_backup(context.session, wanted)
        if found is None or found.environment_id != source.id:
            raise StepError(f"backup {wanted} of {source.name} is gone")
        try:
            await backups.check(Path(found.location), found.sha256)
        except backups.BackupError as exc:
            raise StepError(str(exc)) from None
        return SourceBackup(backup_id=found.id, revision=found.revision, picked=True)
    url = database_url(context, source)
    taken = await backup(context, source, await revisions.current(url, source.version_table))
    return SourceBackup(backup_id=taken["backup_id"], revision=taken["revision"])


async def target_backup(context: StepContext) -> dict[str, Any]:
    """The way back: the target as it is now."""
    _, target = await environment_of(context)
    url = database_url(context, target)
    return await backup(context, target, await revisions.current(url, target.version_table))


def _scratch_url(context: StepContext, target: Environment) -> str:
    return provisioning.with_database(
        database_url(context, target), provisioning.scratch_name(target)
    )


@contextlib.asynccontextmanager
async def _scratch_dropped_on_failure(
    context: StepContext, target: Environment
) -> AsyncIterator[None]:
    """Unmasked data lies in the scratch database until masking is verified: a failing
    step drops it (a worker that dies leaves it to the next refresh, or the project's
    deletion)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            await provisioning.drop_scratch(context.settings.projects_server_url(), target)
        raise


async def _chosen_dump(context: StepContext) -> Path:
    """The file of the source backup (checked by the source_backup step)."""
    chosen = earlier(context, SourceBackup)
    found = await repository.get_backup(context.session, chosen.backup_id)
    if found is None:
        raise StepError(f"backup {chosen.backup_id} is gone")
    return Path(found.location)


async def restore(context: StepContext) -> Restored:
    """The source backup's tables and rows into a new scratch database; its indexes,
    constraints and triggers wait for the masking to be done (post-data)."""
    _, target = await environment_of(context)
    dump = await _chosen_dump(context)
    await provisioning.create_scratch(context.settings.projects_server_url(), target)
    async with _scratch_dropped_on_failure(context, target):
        await context.progress(10, f"restoring {dump.name} into a scratch database")
        try:
            await backups.load(
                _scratch_url(context, target), dump, "pre-data", "data",
                jobs=context.settings.refresh_restore_jobs,
            )  # fmt: skip
        except backups.BackupError as exc:
            raise StepError(f"the source backup could not be restored: {exc}") from None
        async with db.connection(_scratch_url(context, target)) as conn:
            rows = await masking.row_counts(conn)
    return Restored(rows=rows)


async def mask(context: StepContext) -> MaskedColumns:
    """The masking rules over the default, applied in SQL, batch by batch, on
    HATCHERY_REFRESH_RESTORE_JOBS connections at once."""
    _, target = await environment_of(context)
    settings = context.settings
    url = _scratch_url(context, target)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(_scratch_dropped_on_failure(context, target))
        conns = [
            await stack.enter_async_context(db.connection(url, isolation_level="AUTOCOMMIT"))
            for _ in range(settings.refresh_restore_jobs)
        ]
        masked, problems = await masking.planned(
            conns[0], target.masking_rules or [], environments.sensitive(settings)
        )
        if problems:
            raise StepError("the masking rules cannot apply: " + "; ".join(problems))
        await masking.remember_sources(conns[0], masked)

        async def progress(table: str, pages: int, total: int) -> None:
            await context.progress(100 * pages / max(total, 1), f"{table}: page {pages}/{total}")

        report = await masking.mask(
            conns, masked, masking.new_seed(), progress, settings.refresh_batch_pages
        )
    context.run.add_result(masking=report)
    return MaskedColumns(columns=[dataclasses.asdict(m) for m in masked])


def _masked(columns: list[dict[str, Any]]) -> list[masking.Masked]:
    return [
        masking.Masked(masking.Column(**c["column"]), c["strategy"], c["value"]) for c in columns
    ]


async def verify(context: StepContext) -> dict[str, Any]:
    """Indexes, constraints and triggers restored (unique keys and foreign keys checked
    by PostgreSQL as they are made); the row count of every table masking rewrote equal
    to the backup's (the others were not written since they were counted); no source
    value left in a masked column."""
    _, target = await environment_of(context)
    url = _scratch_url(context, target)
    backed_up = earlier(context, Restored).rows
    masked = _masked(earlier(context, MaskedColumns).columns)
    dump = await _chosen_dump(context)
    async with _scratch_dropped_on_failure(context, target):
        try:
            await backups.load(url, dump, "post-data", jobs=context.settings.refresh_restore_jobs)
        except backups.BackupError as exc:
            raise StepError(f"constraints or indexes failed on the masked data: {exc}") from None
        rewritten = {m.column.qualified_table for m in masked}
        async with db.connection(url, isolation_level="AUTOCOMMIT") as conn:
            recounted = await masking.row_counts(conn, rewritten)
            tables = set(await masking.tables(conn))
            left = await masking.leftovers(conn, masked)
            not_valid = await conn.scalar(INVALID_CONSTRAINTS)
            await masking.forget_sources(conn)
        differ = sorted(
            {t for t in recounted if recounted[t] != backed_up.get(t)} ^ (tables ^ set(backed_up))
        )
        report = {
            "rows": backed_up,
            "recounted": recounted,
            "rows_equal": not differ,
            "source_values_left": left,
            "constraints_not_valid": int(not_valid or 0),
        }
        context.run.add_result(verification=report)
        if differ:
            raise StepFailed(f"row counts differ from the backup's in {', '.join(differ)}", report)
        if any(left.values()):
            columns = ", ".join(c for c, n in left.items() if n)
            raise StepFailed(f"source values are left in {columns}", report)
    return report


INVALID_CONSTRAINTS = text(
    "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
    "WHERE NOT c.convalidated AND n.nspname NOT LIKE 'pg\\_%'"
)


async def swap(context: StepContext) -> dict[str, Any]:
    """The scratch database becomes the target's (its sessions ended); the database it
    replaces is kept as the previous one unless HATCHERY_REFRESH_KEEP_PREVIOUS is off."""
    _, target = await environment_of(context)
    keep = context.settings.refresh_keep_previous
    await provisioning.swap_in_scratch(context.settings.projects_server_url(), target, keep)
    return {"previous_database": provisioning.previous_name(target) if keep else None}


async def record(context: StepContext) -> dict[str, Any]:
    _, target = await environment_of(context)
    target.revision = await revisions.current(database_url(context, target), target.version_table)
    await schema_cache.invalidate(context.redis, target.id)
    chosen = earlier(context, SourceBackup)
    context.run.add_result(revision=target.revision, source_backup_id=str(chosen.backup_id))
    return {"revision": target.revision}


PLAN = Plan(
    params=RefreshParams,
    steps=[
        (SOURCE_BACKUP, source_backup),
        (TARGET_BACKUP, target_backup),
        (RESTORE, restore),
        (MASK, mask),
        (VERIFY, verify),
        (SWAP, swap),
        (RECORD, record),
    ],
    exclusive=migration_lock,
    still_working=migrator_alive,
)
