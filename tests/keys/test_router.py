import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.config import Settings
from hatchery.keys.models import Scope
from tests.conftest import bearer, make_key


async def test_admin_creates_key_and_sees_token_once(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await client.post(
        "/api/v1/keys",
        json={"name": "ci", "scopes": ["projects:read", "deploy"]},
        headers=bearer(admin_token),
    )
    assert response.status_code == 201
    created = response.json()
    assert created["token"].startswith("hat_" + created["prefix"] + "_")
    assert created["scopes"] == ["deploy", "projects:read"]

    listed = await client.get("/api/v1/keys", headers=bearer(admin_token))
    assert listed.status_code == 200
    entry = next(k for k in listed.json()["items"] if k["id"] == created["id"])
    assert "token" not in entry
    assert entry["prefix"] == created["prefix"]

    works = await client.get("/api/v1/keys", headers=bearer(created["token"]))
    assert works.status_code == 403  # authenticated, but not an admin


async def test_plaintext_token_is_stored_nowhere(
    client: httpx.AsyncClient, admin_token: str, session: AsyncSession
) -> None:
    response = await client.post(
        "/api/v1/keys", json={"name": "x", "scopes": ["schema:read"]}, headers=bearer(admin_token)
    )
    token = response.json()["token"]
    secret = token.split("_", 2)[2]
    for table in ("api_key", "audit_event"):
        dump = await session.scalar(
            text(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t")
        )
        assert token not in dump and secret not in dump


async def test_revoked_key_is_refused_with_401(client: httpx.AsyncClient, admin_token: str) -> None:
    created = (
        await client.post(
            "/api/v1/keys", json={"name": "x", "scopes": ["admin"]}, headers=bearer(admin_token)
        )
    ).json()
    assert (await client.get("/api/v1/keys", headers=bearer(created["token"]))).status_code == 200

    revoke = await client.delete(f"/api/v1/keys/{created['id']}", headers=bearer(admin_token))
    assert revoke.status_code == 204
    again = await client.delete(f"/api/v1/keys/{created['id']}", headers=bearer(admin_token))
    assert again.status_code == 204

    refused = await client.get("/api/v1/keys", headers=bearer(created["token"]))
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "revoked" in refused.json()["detail"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-token",
        "Bearer hat_short_x",
        "Bearer hat_0123456789ab_" + "x" * 43,  # well-formed, unknown
    ],
    ids=["missing", "empty", "basic", "malformed", "short", "unknown"],
)
async def test_bad_credentials_get_401(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get("/api/v1/keys", headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == 401


async def test_unknown_secret_with_known_prefix_gets_401(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    forged = admin_token[:-4] + ("aaaa" if not admin_token.endswith("aaaa") else "bbbb")
    assert (await client.get("/api/v1/keys", headers=bearer(forged))).status_code == 401


async def test_wrong_scope_gets_403(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    _, token = await make_key(session, settings, Scope.projects_read, Scope.deploy)
    response = await client.post(
        "/api/v1/keys", json={"name": "x", "scopes": ["admin"]}, headers=bearer(token)
    )
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]


async def test_admin_key_cannot_be_bound_to_a_project(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await client.post(
        "/api/v1/keys",
        json={"name": "x", "scopes": ["admin"], "project_id": str(uuid.uuid4())},
        headers=bearer(admin_token),
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body"


async def test_a_key_bound_to_an_unknown_project_is_refused_and_not_stored(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    before = (await client.get("/api/v1/keys", headers=bearer(admin_token))).json()["items"]
    response = await client.post(
        "/api/v1/keys",
        json={"name": "x", "scopes": ["deploy"], "project_id": str(uuid.uuid4())},
        headers=bearer(admin_token),
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "body.project_id"
    assert (await client.get("/api/v1/keys", headers=bearer(admin_token))).json()["items"] == before


async def test_unknown_scope_names_the_field(client: httpx.AsyncClient, admin_token: str) -> None:
    response = await client.post(
        "/api/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=bearer(admin_token)
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["body.scopes.0"]


async def test_revoking_unknown_key_is_404(client: httpx.AsyncClient, admin_token: str) -> None:
    response = await client.delete(f"/api/v1/keys/{uuid.uuid4()}", headers=bearer(admin_token))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_key_use_is_recorded(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    key, token = await make_key(session, settings, Scope.admin)
    assert key.last_used_at is None
    await client.get("/api/v1/keys", headers=bearer(token))
    await session.refresh(key)
    assert key.last_used_at is not None


async def test_key_creation_is_audited_with_request_id(
    client: httpx.AsyncClient, admin_token: str, session: AsyncSession
) -> None:
    response = await client.post(
        "/api/v1/keys",
        json={"name": "x", "scopes": ["deploy"]},
        headers={**bearer(admin_token), "X-Request-ID": "audit-me-1"},
    )
    created_id = response.json()["id"]
    row = (
        await session.execute(
            text(
                "SELECT action, request_id FROM audit_event WHERE detail->>'created_key_id' = :id"
            ),
            {"id": created_id},
        )
    ).one()
    assert tuple(row) == ("key.created", "audit-me-1")
