import subprocess
import sys

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import bearer


def hatchery(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hatchery.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_keys_create_list_revoke_from_the_command_line(
    service_env: dict[str, str], engine: AsyncEngine
) -> None:
    created = hatchery(
        service_env,
        "keys",
        "create",
        "--name",
        "cli-key",
        "--scope",
        "deploy",
        "--scope",
        "projects:read",
    )
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines())
    key_id, token = fields["id"].strip(), fields["token"].strip()
    assert token.startswith("hat_")

    listed = hatchery(service_env, "keys", "list")
    line = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert "active" in line and "deploy,projects:read" in line and token not in listed.stdout

    assert hatchery(service_env, "keys", "revoke", key_id).returncode == 0
    assert "revoked" in next(
        line
        for line in hatchery(service_env, "keys", "list").stdout.splitlines()
        if line.startswith(key_id)
    )
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM api_key WHERE id = :id"), {"id": key_id})


async def test_a_key_revoked_from_the_command_line_is_refused_by_a_running_api_at_once(
    service_env: dict[str, str], live: httpx.AsyncClient
) -> None:
    created = hatchery(service_env, "keys", "create", "--name", "short-lived", "--scope", "admin")
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines())
    key_id, token = fields["id"].strip(), fields["token"].strip()
    # The api process now remembers the key: the revocation must reach it over Redis.
    assert (await live.get("/api/v1/keys", headers=bearer(token))).status_code == 200
    assert (await live.get("/api/v1/keys", headers=bearer(token))).status_code == 200

    assert hatchery(service_env, "keys", "revoke", key_id).returncode == 0

    refused = await live.get("/api/v1/keys", headers=bearer(token))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]


def test_admin_scope_cannot_be_bound_to_a_project(service_env: dict[str, str]) -> None:
    result = hatchery(
        service_env,
        "keys",
        "create",
        "--name",
        "x",
        "--scope",
        "admin",
        "--project",
        "00000000-0000-0000-0000-000000000001",
    )
    assert result.returncode == 2
    assert "admin" in result.stderr
