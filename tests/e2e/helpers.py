import asyncio
import time
from typing import Any

import httpx

from tests.conftest import bearer


async def create_project(
    client: httpx.AsyncClient,
    token: str,
    slug: str,
    template: str = "fastapi-service",
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/projects",
        json={"slug": slug, "name": slug.title(), "template": template, **extra},
        headers=bearer(token),
    )
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def wait_for_run(
    client: httpx.AsyncClient, token: str, run_id: str, timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/v1/runs/{run_id}", headers=bearer(token))
        run: dict[str, Any] = response.json()
        if run["status"] in {"succeeded", "failed", "cancelled"}:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        await asyncio.sleep(0.2)


async def get_project(client: httpx.AsyncClient, token: str, project_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/projects/{project_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    project: dict[str, Any] = response.json()
    return project
