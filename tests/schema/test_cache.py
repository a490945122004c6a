"""Cached, never stale, access-controlled."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hatchery import db
from hatchery.app import create_app
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres
from hatchery.keys.models import Scope
from hatchery.projects.models import Project
from hatchery.schema import catalog
from tests.conftest import bearer, make_key, serving
from tests.schema.conftest import project_on


@pytest.fixture
def scratch_database(postgres: EmbeddedPostgres) -> str:
    name = f"ddl_{uuid.uuid4().hex[:8]}"
    postgres.psql("postgres", f"CREATE DATABASE {name}")
    postgres.psql(name, "CREATE TABLE thing (id int PRIMARY KEY)")
    return name


def url(project: Project, suffix: str = "") -> str:
    return f"/api/v1/projects/{project.id}/environments/staging/schema{suffix}"


async def test_unchanged_schema_keeps_its_etag_and_answers_304(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str
) -> None:
    first = await client.get(url(schema_project), headers=bearer(schema_token))
    again = await client.get(url(schema_project), headers=bearer(schema_token))
    etag = first.headers["etag"]
    assert again.headers["etag"] == etag and first.json()["fingerprint"] == etag.strip('"')
    cached = await client.get(
        url(schema_project), headers={**bearer(schema_token), "If-None-Match": etag}
    )
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == etag


async def test_ddl_run_with_psql_is_seen_on_the_very_next_request(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    postgres: EmbeddedPostgres,
    scratch_database: str,
    schema_token: str,
) -> None:
    project = await project_on(session, settings, postgres, scratch_database)
    before = await client.get(url(project), headers=bearer(schema_token))
    assert [t["name"] for t in before.json()["tables"]] == ["thing"]

    postgres.psql(scratch_database, "ALTER TABLE thing ADD COLUMN label text")
    after = await client.get(
        url(project), headers={**bearer(schema_token), "If-None-Match": before.headers["etag"]}
    )
    assert after.status_code == 200
    assert after.headers["etag"] != before.headers["etag"]
    assert [c["name"] for c in after.json()["tables"][0]["columns"]] == ["id", "label"]

    for ddl in (
        "COMMENT ON COLUMN thing.label IS 'shown'",
        "ALTER TABLE thing ALTER COLUMN label SET NOT NULL",
        "CREATE INDEX ix_thing_label ON thing (label)",
    ):
        etag = after.headers["etag"]
        postgres.psql(scratch_database, ddl)
        after = await client.get(url(project), headers=bearer(schema_token))
        assert after.headers["etag"] != etag, ddl
    thing = after.json()["tables"][0]
    assert thing["columns"][1]["comment"] == "shown" and not thing["columns"][1]["nullable"]
    assert "ix_thing_label" in [i["name"] for i in thing["indexes"]]


async def test_a_change_the_probe_missed_is_caught_by_the_exact_check(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    postgres: EmbeddedPostgres,
    scratch_database: str,
    schema_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = await project_on(session, settings, postgres, scratch_database)
    first = await client.get(url(project), headers=bearer(schema_token))
    # As if PostgreSQL had not published the DDL session's statistics yet.
    monkeypatch.setattr(catalog, "PROBE", catalog.text("SELECT 'frozen'"))
    await client.get(url(project), headers=bearer(schema_token))
    postgres.psql(scratch_database, "ALTER TABLE thing RENAME COLUMN id TO ident")
    monkeypatch.setattr(settings, "schema_verify_seconds", 0.001)
    await asyncio.sleep(0.01)
    after = await client.get(url(project), headers=bearer(schema_token))
    assert after.headers["etag"] != first.headers["etag"]
    assert after.json()["tables"][0]["columns"][0]["name"] == "ident"


@pytest.fixture
async def committed(
    engine: AsyncEngine, settings: Settings, postgres: EmbeddedPostgres, scratch_database: str
) -> AsyncIterator[tuple[Project, str]]:
    """Rows committed for real: concurrent requests need connections of their own."""
    async with db.create_sessionmaker(engine)() as session:
        project = await project_on(session, settings, postgres, scratch_database)
        key, token = await make_key(session, settings, Scope.schema_read)
    yield project, token
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM project WHERE id = :id"), {"id": project.id})
        await conn.execute(text("DELETE FROM api_key WHERE id = :id"), {"id": key.id})


async def test_concurrent_cold_reads_share_one_introspection(
    settings: Settings, committed: tuple[Project, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, token = committed
    calls = 0
    real = catalog.introspect

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return await real(*args, **kwargs)

    monkeypatch.setattr(catalog, "introspect", counted)
    async with serving(create_app(settings)) as client:
        responses = await asyncio.gather(
            *(client.get(url(project), headers=bearer(token)) for _ in range(10))
        )
    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.headers["etag"] for r in responses}) == 1
    assert calls == 1


async def test_schema_read_scope_and_project_binding_are_required(
    client: httpx.AsyncClient,
    schema_project: Project,
    session: AsyncSession,
    settings: Settings,
    postgres: EmbeddedPostgres,
    schema_database: str,
) -> None:
    _, reader = await make_key(session, settings, Scope.projects_read)
    other = await project_on(session, settings, postgres, schema_database)
    _, elsewhere = await make_key(session, settings, Scope.schema_read, project_id=other.id)
    _, bound = await make_key(session, settings, Scope.schema_read, project_id=schema_project.id)
    assert (await client.get(url(schema_project), headers=bearer(reader))).status_code == 403
    assert (await client.get(url(schema_project), headers=bearer(elsewhere))).status_code == 403
    assert (await client.get(url(schema_project), headers=bearer(bound))).status_code == 200
    unknown = await client.get(
        f"/api/v1/projects/{schema_project.id}/environments/nope/schema", headers=bearer(bound)
    )
    assert unknown.status_code == 404


@pytest.fixture
async def hiding_client(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"schema_hide_sensitive": True}))
    async with serving(app, sessionmaker) as client:
        yield client


async def test_a_setting_hides_sensitive_columns_entirely(
    hiding_client: httpx.AsyncClient, schema_project: Project, schema_token: str
) -> None:
    document = (await hiding_client.get(url(schema_project), headers=bearer(schema_token))).json()
    customer = next(t for t in document["tables"] if t["name"] == "customer")
    names = [c["name"] for c in customer["columns"]]
    assert "password_hash" not in names and "email" in names


async def test_every_schema_object_is_a_typed_model_in_openapi(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    operation = document["paths"]["/api/v1/projects/{project_id}/environments/{environment}/schema"]
    ok = operation["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/SchemaDocument"}
    for name in (
        "Table",
        "Column",
        "ForeignKey",
        "Index",
        "Policy",
        "EnumType",
        "DomainType",
        "Sequence",
        "Partitioning",
    ):
        model = components[name]
        assert model["type"] == "object" and model["properties"], name
        for field, spec in model["properties"].items():
            assert spec != {} and spec.get("additionalProperties") is not True, (name, field)


async def test_schema_reads_record_the_keys_use(
    client: httpx.AsyncClient,
    schema_project: Project,
    session: AsyncSession,
    settings: Settings,
) -> None:
    key, token = await make_key(session, settings, Scope.schema_read)
    assert (await client.get(url(schema_project), headers=bearer(token))).status_code == 200
    await session.refresh(key)
    assert key.last_used_at is not None


@pytest.mark.parametrize(
    ("suffix", "field"),
    [
        ("?schema=a%00b", "query.schema"),
        ("?schema=" + "x" * 64, "query.schema"),
        ("/tables/public." + "é" * 32, "path.qualified_name"),  # 64 bytes
        ("/tables/pub%00lic.thing", "path.qualified_name"),
    ],
    ids=["nul-schema", "long-schema", "long-table", "nul-table"],
)
async def test_a_name_postgresql_cannot_have_is_invalid_input(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str, suffix: str, field: str
) -> None:
    response = await client.get(url(schema_project, suffix), headers=bearer(schema_token))
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
