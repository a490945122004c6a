"""Schema reads: a cheap probe on every request, the cached document when nothing
changed, one introspection at a time when something did."""

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hatchery.config import Settings
from hatchery.errors import FieldError, HatcheryError, InvalidInput, NotFound
from hatchery.projects import provisioning
from hatchery.projects import service as projects
from hatchery.projects.models import Environment
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

    def variant(self, masking: catalog.Masking) -> str:
        described = json.dumps(
            [
                self.schemas,
                self.kinds,
                sorted(self.parts),
                self.table,
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
    return schema, table


async def read(
    session: AsyncSession,
    redis: Redis,
    engines: EnvironmentEngines,
    flights: cache.SingleFlight,
    settings: Settings,
    project_id: uuid.UUID,
    environment_name: str,
    query: Query,
    if_none_match: str | None,
) -> Answer:
    environment = await _environment(session, project_id, environment_name)
    url = provisioning.connection_url(environment, settings.encryption_secret)
    # The control database is not needed past this point: release its connection.
    await session.close()
    engine = engines.get(environment.id, url)
    masking = catalog.Masking(
        tuple(settings.schema_sensitive_patterns), settings.schema_hide_sensitive
    )
    cache_key = cache.key(environment.id, query.variant(masking))
    try:
        entry = await _current(
            engine, redis, flights, settings, environment, query, masking, cache_key
        )
    except (OperationalError, DBAPIError, OSError, TimeoutError) as exc:
        raise SchemaUnavailable(
            f"Could not read the schema of '{environment_name}': "
            f"{type(getattr(exc, 'orig', exc)).__name__}"
        ) from None
    if if_none_match and (if_none_match.strip() == "*" or entry.etag in _etags(if_none_match)):
        return Answer(entry.etag, None)
    return Answer(entry.etag, entry.body)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


async def _environment(session: AsyncSession, project_id: uuid.UUID, name: str) -> Environment:
    project = await projects.get_project(session, project_id)
    for environment in project.environments:
        if environment.name == name:
            if environment.database_url is None:
                raise NotFound(f"Environment '{name}' has no database yet")
            return environment
    raise NotFound(f"Project '{project.slug}' has no environment '{name}'")


async def _current(
    engine: AsyncEngine,
    redis: Redis,
    flights: cache.SingleFlight,
    settings: Settings,
    environment: Environment,
    query: Query,
    masking: catalog.Masking,
    cache_key: str,
) -> cache.Entry:
    async with engine.connect() as conn:
        probe = str(await conn.scalar(catalog.PROBE))
        entry = await cache.read(redis, cache_key)
        if entry is not None and entry.probe == probe:
            if time.time() - entry.verified_at < settings.schema_verify_seconds:
                return entry
            if await conn.scalar(catalog.CHECKSUM) == entry.checksum:
                await cache.mark_verified(redis, cache_key, probe)
                return entry

    async def build() -> cache.Entry:
        built = await _introspect(engine, settings, environment, query, masking)
        await cache.write(redis, cache_key, built, settings.schema_cache_ttl_seconds)
        return built

    return await flights.run(cache_key, build)


async def _introspect(
    engine: AsyncEngine,
    settings: Settings,
    environment: Environment,
    query: Query,
    masking: catalog.Masking,
) -> cache.Entry:
    async with engine.connect() as conn:
        # One consistent snapshot for every query, bounded in time.
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        await conn.execute(
            text(f"SET LOCAL statement_timeout = {int(settings.schema_statement_timeout_ms)}")
        )
        probe = str(await conn.scalar(catalog.PROBE))
        checksum = str(await conn.scalar(catalog.CHECKSUM))
        scope = catalog.Scope(schemas=query.schemas, kinds=query.kinds)
        if query.table is not None:
            oid = await catalog.find_relation(conn, *query.table)
            if oid is None:
                raise NotFound(
                    f"No table {query.table[0]}.{query.table[1]} in '{environment.name}'"
                )
            scope = catalog.Scope(relation=oid)
        document = await catalog.introspect(conn, scope, query.parts, masking)
        revision = await catalog.revision(conn)
        await conn.rollback()
    if query.table is not None:
        content: dict[str, Any] = {"table": document["tables"][0]}
    else:
        content = document
    body = json.dumps(content, separators=(",", ":"), default=str)
    fingerprint = hashlib.sha256(f"{revision}\n{body}".encode()).hexdigest()[:32]
    head = json.dumps(
        {"environment": environment.name, "revision": revision, "fingerprint": fingerprint},
        separators=(",", ":"),
    )
    return cache.Entry(
        probe=probe,
        checksum=checksum,
        verified_at=time.time(),
        etag=f'"{fingerprint}"',
        body=(head[:-1] + "," + body[1:]).encode(),
    )
