"""Schema reads: a cheap probe on every request, the cached document when nothing
changed, one introspection at a time when something did."""

import asyncio
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from hatchery import crypto, invalidation, pgtools
from hatchery.config import Settings
from hatchery.errors import Conflict, FieldError, HatcheryError, InvalidInput, NotFound
from hatchery.projects import repository as projects_repository
from hatchery.projects import service as projects
from hatchery.projects.models import Environment, ProjectStatus
from hatchery.schema import cache, catalog
from hatchery.schema.connections import EnvironmentEngines


class SchemaUnavailable(HatcheryError):
    status, problem, title = 503, "schema-unavailable", "Schema unavailable"


@dataclass(frozen=True)
class Query:
    schemas: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    parts: frozenset[str] = catalog.DEFAULT_PARTS
    table: tuple[str, str] | None = None
    # The environment's version table, quoted: left out of the document, read for its revision.
    version_table: str = catalog.VERSION_TABLE

    def variant(self, masking: catalog.Masking) -> str:
        described = json.dumps(
            [
                self.schemas,
                self.kinds,
                sorted(self.parts),
                self.table,
                self.version_table,
                masking.patterns,
                masking.hide,
            ]
        )
        return hashlib.sha256(described.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Answer:
    etag: str
    body: bytes | None  # None: the client's copy is current (304)


def parse_parts(values: list[str] | None) -> frozenset[str]:
    if not values:
        return catalog.DEFAULT_PARTS
    parts: set[str] = set()
    for value in (v.strip() for item in values for v in item.split(",")):
        if value == "default":
            parts |= catalog.DEFAULT_PARTS
        elif value in catalog.PARTS:
            parts.add(value)
        elif value:
            allowed = ", ".join(("default", *catalog.PARTS))
            raise InvalidInput(
                f"Unknown include '{value}' (one of {allowed})",
                errors=[FieldError(field="query.include", message="unknown part", type="enum")],
            )
    return frozenset(parts)


def parse_table(qualified: str) -> tuple[str, str]:
    schema, dot, table = qualified.partition(".")
    if not dot or not schema or not table:
        raise InvalidInput(
            "Name the table as schema.table",
            errors=[
                FieldError(
                    field="path.qualified_name", message="expected schema.table", type="value_error"
                )
            ],
        )
    return identifier(schema, "path.qualified_name"), identifier(table, "path.qualified_name")


def identifier(name: str, field: str) -> str:
    """A name PostgreSQL could have: at most 63 bytes, no NUL character."""
    if "\x00" in name or len(name.encode()) > 63:
        raise InvalidInput(
            f"No PostgreSQL name is like '{name[:70]}'",
            errors=[
                FieldError(field=field, message="at most 63 bytes, without NUL", type="value_error")
            ],
        )
    return name


async def read(
    session: AsyncSession,
    redis: Redis,
    state: "SchemaState",
    known: invalidation.Caches,
    settings: Settings,
    project_id: uuid.UUID,
    environment_name: str,
    query: Query,
    if_none_match: str | None,
) -> Answer:
    remembered = known.named(invalidation.ENVIRONMENTS)
    environment: Environment | None = remembered.get((project_id, environment_name))
    if environment is None:
        environment = await _environment(session, project_id, environment_name)
        # Remembered while it has a database; deleting the project makes processes forget.
        remembered[project_id, environment_name] = Environment(
            id=environment.id,
            name=environment.name,
            database_url=environment.database_url,
            version_table=environment.version_table,
        )
    query = replace(query, version_table=pgtools.quoted_version_table(environment.version_table))
    assert environment.database_url is not None
    engine = state.engines.get(
        environment.id,
        environment.database_url,
        lambda sealed: crypto.decrypt(sealed, settings.encryption_secret),
    )
    masking = catalog.Masking(
        tuple(settings.schema_sensitive_patterns), settings.schema_hide_sensitive
    )
    cache_key = cache.key(environment.id, query.variant(masking))
    try:
        try:
            meta, body = await _current(
                engine, redis, state, settings, environment, query, masking, cache_key,
                if_none_match,
            )  # fmt: skip
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A pooled connection outlived its server (a restart): once more, afresh.
            meta, body = await _current(
                engine, redis, state, settings, environment, query, masking, cache_key,
                if_none_match,
            )  # fmt: skip
    except (OperationalError, DBAPIError, OSError, TimeoutError) as exc:
        name = type(getattr(exc, "orig", exc)).__name__
        raise SchemaUnavailable(
            f"Could not read the schema of '{environment_name}': {name}"
        ) from None
    return Answer(meta.etag, body)


@dataclass
class SchemaState:
    """What an api process keeps for schema reads."""

    engines: EnvironmentEngines = field(default_factory=EnvironmentEngines)
    flights: cache.SingleFlight = field(default_factory=cache.SingleFlight)
    bodies: cache.Bodies = field(default_factory=cache.Bodies)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


async def _environment(session: AsyncSession, project_id: uuid.UUID, name: str) -> Environment:
    environment = await projects_repository.get_environment(session, project_id, name)
    if environment is None:
        project = await projects.get_project(session, project_id)  # 404 for an unknown project
        raise NotFound(f"Project '{project.slug}' has no environment '{name}'")
    if environment.database_url is None:
        raise NotFound(f"Environment '{name}' has no database yet")
    project = environment.project
    if project.status != ProjectStatus.active:
        # An adopted database is read only once the worker has verified it may be.
        raise Conflict(f"Project '{project.slug}' is {project.status}, not active")
    return environment


async def _current(
    engine: AsyncEngine,
    redis: Redis,
    state: SchemaState,
    settings: Settings,
    environment: Environment,
    query: Query,
    masking: catalog.Masking,
    cache_key: str,
    if_none_match: str | None,
) -> tuple[cache.Meta, bytes | None]:
    """The current document's metadata, and its body unless the client has it."""
    async with engine.connect() as conn:
        probed, meta = await asyncio.gather(
            conn.scalar(catalog.PROBE), cache.read_meta(redis, cache_key)
        )
        probe = str(probed)
        if meta is not None and meta.probe == probe:
            fresh = time.time() - meta.verified_at < settings.schema_verify_seconds
            if not fresh and await _checksum(conn, query) == meta.checksum:
                await cache.mark_verified(redis, cache_key, probe)
                fresh = True
            if fresh:
                if _matches(if_none_match, meta.etag):
                    return meta, None
                body = state.bodies.get(meta.etag) or await cache.read_body(
                    redis, cache_key, meta.etag
                )
                if body is not None:
                    state.bodies.put(meta.etag, body)
                    return meta, body

    async def build() -> tuple[cache.Meta, bytes]:
        built, body = await _introspect(engine, settings, environment, query, masking)
        await cache.write(redis, cache_key, built, body, settings.schema_cache_ttl_seconds)
        return built, body

    meta, body = await state.flights.run(cache_key, build)
    state.bodies.put(meta.etag, body)
    return meta, None if _matches(if_none_match, meta.etag) else body


async def _checksum(conn: AsyncConnection, query: Query) -> str:
    if query.table is None:
        return str(await conn.scalar(catalog.CHECKSUM))
    relation = await catalog.find_relation(conn, *query.table, query.version_table)
    return str(await conn.scalar(catalog.TABLE_CHECKSUM, {"relation": relation}))


async def _introspect(
    engine: AsyncEngine,
    settings: Settings,
    environment: Environment,
    query: Query,
    masking: catalog.Masking,
) -> tuple[cache.Meta, bytes]:
    limits = [
        text(f"SET LOCAL statement_timeout = {int(settings.schema_statement_timeout_ms)}"),
        text("SET LOCAL work_mem = '64MB'"),
    ]
    async with engine.connect() as conn, engine.connect() as beside:
        # One consistent snapshot for every query, shared with a second connection that
        # computes the exact checksum meanwhile.
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        for limit in limits:
            await conn.execute(limit)
        snapshot = await conn.scalar(text("SELECT pg_export_snapshot()"))
        await beside.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        await beside.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
        for limit in limits:
            await beside.execute(limit)
        probe = str(await conn.scalar(catalog.PROBE))
        scope = catalog.Scope(
            schemas=query.schemas, kinds=query.kinds, version_table=query.version_table
        )
        if query.table is not None:
            oid = await catalog.find_relation(conn, *query.table, query.version_table)
            if oid is None:
                schema, table = query.table
                raise NotFound(f"No table {schema}.{table} in '{environment.name}'")
            scope = catalog.Scope(relation=oid, version_table=query.version_table)
        checksum = asyncio.create_task(_checksum(beside, query))
        try:
            document = await catalog.introspect(conn, scope, query.parts, masking)
            revision = await catalog.revision(conn, query.version_table)
        finally:
            exact = await checksum
        await beside.rollback()
        await conn.rollback()
    if query.table is not None and not document["tables"]:
        raise NotFound(f"No table {'.'.join(query.table)} in '{environment.name}'")
    content: dict[str, Any] = (
        {"table": document["tables"][0]} if query.table is not None else document
    )
    body = orjson.dumps(content, default=str)
    fingerprint = hashlib.sha256(f"{revision}\n".encode() + body).hexdigest()[:32]
    head = orjson.dumps(
        {"environment": environment.name, "revision": revision, "fingerprint": fingerprint}
    )
    meta = cache.Meta(probe=probe, checksum=exact, verified_at=time.time(), etag=f'"{fingerprint}"')
    return meta, head[:-1] + b"," + body[1:]
