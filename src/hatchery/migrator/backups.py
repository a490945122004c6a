"""pg_dump backups: taken before every change, verified, pruned, restored."""

import asyncio
import hashlib
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import make_url

from hatchery import metrics, pgtools
from hatchery.failures import Failure


class BackupError(Failure):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def dump(database_url: str, destination: Path) -> tuple[int, str]:
    """A custom-format dump, verified: not empty, readable by pg_restore --list. Returns
    its size and sha256."""
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = destination.with_suffix(".partial")
    started = time.monotonic()
    try:
        await pgtools.run(
            "pg_dump", "--format=custom", f"--file={partial}", database_url=database_url
        )
        size = partial.stat().st_size
        if size == 0:
            raise BackupError("pg_dump wrote an empty file")
        await pgtools.run("pg_restore", "--list", str(partial), database_url=database_url)
        sha256 = await asyncio.to_thread(_sha256, partial)
        partial.chmod(0o600)
        partial.rename(destination)
    except pgtools.PgToolError as exc:
        raise BackupError(str(exc)) from exc
    finally:
        partial.unlink(missing_ok=True)
    metrics.BACKUP_SECONDS.observe(time.monotonic() - started)
    metrics.BACKUP_BYTES.observe(size)
    return size, sha256


# Everything the database holds that its role may drop goes first, in the transaction
# that then loads the dump: nothing made after the backup survives a restore, and a
# failure leaves the database as it was.
EMPTY = """
DO $hatchery$
DECLARE found record;
BEGIN
  FOR found IN
    SELECT nspname FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
      AND pg_has_role(nspowner, 'USAGE')
  LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', found.nspname);
  END LOOP;
  FOR found IN
    SELECT format('%I.%I', n.nspname, c.relname) AS name,
           CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                          WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                          ELSE 'TABLE' END AS kind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND pg_has_role(c.relowner, 'USAGE')
      AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
  LOOP
    EXECUTE format('DROP %s IF EXISTS %s CASCADE', found.kind, found.name);
  END LOOP;
END
$hatchery$;
CREATE SCHEMA IF NOT EXISTS public;
"""


async def check(source: Path, expected_sha256: str) -> None:
    """The backup file is there and is what was recorded."""
    if not source.exists():
        raise BackupError(f"backup file {source.name} is missing")
    if await asyncio.to_thread(_sha256, source) != expected_sha256:
        raise BackupError(f"backup file {source.name} does not match its recorded sha256")


async def restore(database_url: str, source: Path, expected_sha256: str) -> None:
    """Make the database exactly what the dump holds, in one transaction."""
    await check(source, expected_sha256)
    try:
        await pgtools.pipe(
            ["pg_restore", "--no-owner", "--no-privileges", "--file=-", str(source)],
            ["psql", "--no-psqlrc", "--quiet", "--single-transaction", "-v", "ON_ERROR_STOP=1",
             "-c", EMPTY, "-f", "-"],
            database_url=database_url,
        )  # fmt: skip
    except pgtools.PgToolError as exc:
        raise BackupError(str(exc)) from exc


def location(backups_dir: Path, project: str, environment: str, when: datetime, tag: str) -> Path:
    return backups_dir.resolve() / project / environment / f"{when:%Y%m%dT%H%M%S%f}-{tag}.dump"


def expiry(when: datetime, keep_days: int) -> datetime:
    return when + timedelta(days=keep_days)


async def load(database_url: str, source: Path, *sections: str, jobs: int = 1) -> None:
    """Restore sections of a checked dump (`pre-data`, `data`, `post-data`) into a new,
    empty database, as its owner, with `jobs` connections at once; stops at the first
    error."""
    database = make_url(database_url).database or ""
    try:
        await pgtools.run(
            "pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", f"--jobs={jobs}",
            *(f"--section={s}" for s in sections), f"--dbname={database}", str(source),
            database_url=database_url,
        )  # fmt: skip
    except pgtools.PgToolError as exc:
        raise BackupError(str(exc)) from exc
