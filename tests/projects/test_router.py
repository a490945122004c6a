import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.config import Settings
from hatchery.keys.models import Scope
from tests.conftest import bearer, make_key


async def _create(
    client: httpx.AsyncClient, token: str, slug: str, **extra: object
) -> httpx.Response:
    return await client.post(
        "/api/v1/projects",
        json={"slug": slug, "name": slug, "template": "fastapi-service", **extra},
        headers=bearer(token),
    )


async def test_created_project_has_location_environments_and_a_queued_run(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await _create(client, admin_token, "api-one", environments=["dev", "qa", "prod"])
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/api/v1/projects/{body['project']['id']}"
    assert [e["name"] for e in body["project"]["environments"]] == ["dev", "qa", "prod"]
    assert body["project"]["repository_url"].startswith("file:///")
    assert body["run"]["status"] == "queued"
    assert body["run"]["events_url"] == f"/api/v1/runs/{body['run']['id']}/events"


async def test_projects_are_paged_by_cursor_and_filtered_by_status(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    for slug in ("page-a", "page-b", "page-c"):
        assert (await _create(client, admin_token, slug)).status_code == 202
    first = (await client.get("/api/v1/projects?limit=2", headers=bearer(admin_token))).json()
    second = (
        await client.get(
            f"/api/v1/projects?limit=2&cursor={first['next_cursor']}", headers=bearer(admin_token)
        )
    ).json()
    slugs = [p["slug"] for p in first["items"] + second["items"]]
    assert slugs[:3] == ["page-c", "page-b", "page-a"]
    assert len(slugs) == len(set(slugs))

    pending = await client.get("/api/v1/projects?status=pending", headers=bearer(admin_token))
    assert {"page-a", "page-b", "page-c"} <= {p["slug"] for p in pending.json()["items"]}
    active = await client.get("/api/v1/projects?status=active", headers=bearer(admin_token))
    assert not {"page-a", "page-b", "page-c"} & {p["slug"] for p in active.json()["items"]}


async def test_bad_inputs_name_their_field(client: httpx.AsyncClient, admin_token: str) -> None:
    cases = {
        "body.slug": {"slug": "Not_DNS", "name": "x", "template": "fastapi-service"},
        "body.environments": {
            "slug": "dup-env", "name": "x", "template": "fastapi-service",
            "environments": ["prod", "prod"],
        },
        "body.environments.0": {
            "slug": "bad-env", "name": "x", "template": "fastapi-service", "environments": ["A B"],
        },
    }  # fmt: skip
    for field, body in cases.items():
        response = await client.post("/api/v1/projects", json=body, headers=bearer(admin_token))
        assert response.status_code == 422, body
        assert field in [e["field"] for e in response.json()["errors"]], response.json()
    cursor = await client.get("/api/v1/projects?cursor=garbage", headers=bearer(admin_token))
    assert cursor.status_code == 422
    assert cursor.json()["errors"][0]["field"] == "query.cursor"


async def test_templates_are_listed_with_descriptions(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await client.get("/api/v1/templates", headers=bearer(admin_token))
    templates = {t["name"]: t["description"] for t in response.json()["items"]}
    assert "FastAPI" in templates["fastapi-service"]


async def test_reading_needs_projects_read_and_writing_projects_write(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, reader = await make_key(session, settings, Scope.projects_read)
    _, schema_only = await make_key(session, settings, Scope.schema_read)
    assert (await client.get("/api/v1/projects", headers=bearer(reader))).status_code == 200
    assert (await client.get("/api/v1/projects", headers=bearer(schema_only))).status_code == 403
    assert (await _create(client, reader, "not-allowed")).status_code == 403


async def test_project_runs_are_listed_newest_first(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    created = (await _create(client, admin_token, "runs-list")).json()
    response = await client.get(
        f"/api/v1/projects/{created['project']['id']}/runs", headers=bearer(admin_token)
    )
    assert [r["id"] for r in response.json()["items"]] == [created["run"]["id"]]


async def test_same_idempotency_key_returns_the_first_project_and_run(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    headers = {**bearer(admin_token), "Idempotency-Key": "create-once-1"}
    body = {"slug": "idem-one", "name": "x", "template": "fastapi-service"}
    first = await client.post("/api/v1/projects", json=body, headers=headers)
    again = await client.post("/api/v1/projects", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["run"]["id"] == first.json()["run"]["id"]
    assert again.json()["project"]["id"] == first.json()["project"]["id"]
    other = await client.post("/api/v1/projects", json=body, headers=bearer(admin_token))
    assert other.status_code == 409


async def test_an_alembic_ini_path_no_file_system_can_hold_is_refused_naming_the_field(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    # Found by the fuzzer: a 300-byte name reached the worker, whose lookup raised.
    project = (await _create(client, admin_token, "long-names")).json()["project"]
    answer = await client.put(
        f"/api/v1/projects/{project['id']}/migration-settings",
        json={"alembic_ini": "a" * 300 + "/alembic.ini"},
        headers=bearer(admin_token),
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "body.alembic_ini"
    assert "at most 255 bytes" in answer.json()["errors"][0]["message"]
