"""pg_dump backups: taken before every change, verified, pruned, restored."""

import asyncio
import hashlib
import time
from datetime import datetime, timedelta
from pathlib import Path

from hatchery import metrics, pgtools


class BackupError(RuntimeError):
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


async def restore(database_url: str, source: Path, expected_sha256: str) -> None:
    """Replace the database's contents with the dump's, in one transaction."""
    if not source.exists():
        raise BackupError(f"backup file {source.name} is missing")
    if await asyncio.to_thread(_sha256, source) != expected_sha256:
        raise BackupError(f"backup file {source.name} does not match its recorded sha256")
    try:
        await pgtools.run(
            "pg_restore",
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--dbname={pgtools.libpq_environment(database_url)['PGDATABASE']}",
            str(source),
            database_url=database_url,
        )
    except pgtools.PgToolError as exc:
        raise BackupError(str(exc)) from exc


def location(backups_dir: Path, project: str, environment: str, when: datetime, tag: str) -> Path:
    return backups_dir.resolve() / project / environment / f"{when:%Y%m%dT%H%M%S%f}-{tag}.dump"


def expiry(when: datetime, keep_days: int) -> datetime:
    return when + timedelta(days=keep_days)
