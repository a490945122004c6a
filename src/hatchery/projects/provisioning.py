"""Each environment's database and role, on the configured projects server."""

import uuid
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from hatchery import crypto, db
from hatchery.pgtools import ident
from hatchery.projects.models import Environment


def object_name(slug: str, project_id: uuid.UUID, environment: str) -> str:
    """`<slug>_<8 hex of id>_<env>`: readable, unique per project, under 63 bytes."""
    return f"{slug.replace('-', '_')}_{project_id.hex[:8]}_{environment.replace('-', '_')}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def seal(database_url: str, encryption_key: bytes) -> bytes:
    return crypto.encrypt(database_url, encryption_key)


def connection_url(environment: Environment, encryption_key: bytes) -> str:
    """The environment's database URL, credentials included: for server-side use only."""
    if environment.database_url is None:
        raise RuntimeError(f"environment {environment.name} has no database yet")
    return crypto.decrypt(environment.database_url, encryption_key)


def database_url(server_url: str, database: str, role: str, password: str) -> str:
    url = make_url(server_url).set(username=role, password=password, database=database)
    return url.render_as_string(hide_password=False)


async def provision(
    server_url: str, database: str, role: str, password: str, protected: Iterable[str] = ()
) -> None:
    """Create (or bring back in line) a login role and a database it owns. Safe to repeat:
    an existing role gets the new password, an existing database is kept. Project roles
    may connect to their own database only: not to the server's maintenance databases,
    the one Hatchery connects to, or `protected` (the control database)."""
    async with db.connection(server_url, isolation_level="AUTOCOMMIT") as conn:
        role_exists = await conn.scalar(
            text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        )
        verb = "ALTER" if role_exists else "CREATE"
        await conn.execute(text(f"{verb} ROLE {ident(role)} LOGIN PASSWORD {_literal(password)}"))
        db_exists = await conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
        )
        if not db_exists:
            await conn.execute(text(f"CREATE DATABASE {ident(database)} OWNER {ident(role)}"))
        await conn.execute(text(f"REVOKE ALL ON DATABASE {ident(database)} FROM PUBLIC"))
        await _close_maintenance_databases(conn, protected)


async def _close_maintenance_databases(conn: AsyncConnection, protected: Iterable[str]) -> None:
    names = await conn.scalars(
        text(
            "SELECT datname FROM pg_database WHERE datname = ANY(:names) "
            "AND has_database_privilege('public', oid, 'CONNECT')"
        ),
        {"names": sorted({"postgres", "template1", *protected})},
    )
    current = await conn.scalar(text("SELECT current_database()"))
    for name in {*names, current}:
        # Only the owner or a superuser may; for anyone else PostgreSQL warns and goes on.
        await conn.execute(text(f"REVOKE CONNECT ON DATABASE {ident(name)} FROM PUBLIC"))


async def drop(server_url: str, environment: Environment) -> None:
    """The environment's database, those a refresh left (scratch, previous), its role."""
    names = (environment.database_name, scratch_name(environment), previous_name(environment))
    async with db.connection(server_url, isolation_level="AUTOCOMMIT") as conn:
        for name in names:
            await _drop_database(conn, name)
        await conn.execute(text(f"DROP ROLE IF EXISTS {ident(environment.role_name)}"))


async def _drop_database(conn: AsyncConnection, name: str) -> None:
    """Gone, whoever is connected to it (`conn` in autocommit)."""
    await conn.execute(text(f"DROP DATABASE IF EXISTS {ident(name)} WITH (FORCE)"))


# A refresh restores and masks into a scratch database, then swaps it in; the database it
# replaced is kept as the previous one (until the next refresh), the way back.


def scratch_name(environment: Environment) -> str:
    return f"hatchery_scratch_{environment.id.hex}"


def previous_name(environment: Environment) -> str:
    return f"hatchery_previous_{environment.id.hex}"


def with_database(database_url: str, database: str) -> str:
    return make_url(database_url).set(database=database).render_as_string(hide_password=False)


async def create_scratch(server_url: str, environment: Environment) -> None:
    """An empty scratch database owned by the environment's role (an earlier one, left by
    a refresh that died, is dropped first)."""
    name = ident(scratch_name(environment))
    async with db.connection(server_url, isolation_level="AUTOCOMMIT") as conn:
        await _drop_database(conn, scratch_name(environment))
        await conn.execute(text(f"CREATE DATABASE {name} OWNER {ident(environment.role_name)}"))
        await conn.execute(text(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC"))


async def drop_scratch(server_url: str, environment: Environment) -> None:
    async with db.connection(server_url, isolation_level="AUTOCOMMIT") as conn:
        await _drop_database(conn, scratch_name(environment))


async def swap_in_scratch(server_url: str, environment: Environment, keep_previous: bool) -> None:
    """The scratch database becomes the environment's, in one transaction: its sessions
    are ended (PostgreSQL waits for them to go), the database it had becomes the previous
    one (the one before that is dropped), or is dropped too when not kept."""
    target = ident(environment.database_name)
    previous = ident(previous_name(environment))
    async with db.connection(server_url, isolation_level="AUTOCOMMIT") as conn:
        await _drop_database(conn, previous_name(environment))
    async with db.connection(server_url) as conn, conn.begin():
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname IN (:target, :scratch) AND pid <> pg_backend_pid()"
            ),
            {"target": environment.database_name, "scratch": scratch_name(environment)},
        )
        await conn.execute(text(f"ALTER DATABASE {target} RENAME TO {previous}"))
        await conn.execute(
            text(f"ALTER DATABASE {ident(scratch_name(environment))} RENAME TO {target}")
        )
    if not keep_previous:
        async with db.connection(server_url, isolation_level="AUTOCOMMIT") as conn:
            await _drop_database(conn, previous_name(environment))
