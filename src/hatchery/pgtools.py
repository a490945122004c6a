"""PostgreSQL's command-line tools (pg_dump, pg_restore), run without credentials in argv."""

import asyncio
import os
import shutil
from pathlib import Path

from sqlalchemy.engine import make_url

from hatchery.failures import Failure

PG_BIN_DIRS = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/local/pgsql/bin")]


class PgToolError(Failure):
    pass


def pg_binary(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise PgToolError(f"PostgreSQL's {name} was not found; install the PostgreSQL 15 client")
    return found


def libpq_environment(database_url: str) -> dict[str, str]:
    """PG* variables for a SQLAlchemy URL: the password travels in the environment."""
    url = make_url(database_url)
    variables = {
        "PGHOST": url.host or "localhost",
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "",
        "PGDATABASE": url.database or "",
        "PGPASSWORD": url.password or "",
        "PGCONNECT_TIMEOUT": "10",
    }
    return {**os.environ, **{k: str(v) for k, v in variables.items() if v}}


async def run(tool: str, *args: str, database_url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        pg_binary(tool),
        *args,
        env=libpq_environment(database_url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        raise PgToolError(f"{tool} failed: {message[-1] if message else process.returncode}")
    return out.decode(errors="replace")


async def pipe(first: list[str], second: list[str], *, database_url: str) -> None:
    """`first | second`, both PostgreSQL tools; fails with the first error either says."""
    env = libpq_environment(database_url)
    reader, writer = os.pipe()
    try:
        producer = await asyncio.create_subprocess_exec(
            pg_binary(first[0]), *first[1:], env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=writer, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        consumer = await asyncio.create_subprocess_exec(
            pg_binary(second[0]), *second[1:], env=env, stdin=reader,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(reader)
        os.close(writer)
    (_, produced), (_, consumed) = await asyncio.gather(
        producer.communicate(), consumer.communicate()
    )
    for tool, process, err in ((second[0], consumer, consumed), (first[0], producer, produced)):
        if process.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            raise PgToolError(f"{tool} failed: {message[-1] if message else process.returncode}")


def quoted_version_table(version_table: str | None) -> str:
    """Alembic's version table (`alembic_version` unless a project names another, maybe
    `schema.table`) as an identifier PostgreSQL reads."""
    return ".".join(ident(p) for p in (version_table or "alembic_version").split("."))


def ident(name: str) -> str:
    """A name as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
