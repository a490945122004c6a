import asyncio
import subprocess
import sys
import time
from pathlib import Path
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


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def revision_source(
    revision: str, down: str | None, upgrade: list[str], downgrade: list[str] | None
) -> str:
    """An Alembic revision file running these SQL statements; no downgrade when None."""
    ups = "\n".join(f"    op.execute({sql!r})" for sql in upgrade)
    downs = "\n".join(f"    op.execute({sql!r})" for sql in downgrade) if downgrade else "    pass"
    return (
        f'"""revision {revision}"""\n\nfrom alembic import op\n\n'
        f"revision = {revision!r}\ndown_revision = {down!r}\n\n\n"
        f"def upgrade() -> None:\n{ups}\n\n\ndef downgrade() -> None:\n{downs}\n"
    )


class WorkingCopy:
    """A developer's clone of a project's repository."""

    def __init__(self, url: str, path: Path) -> None:
        self.path = path
        git("clone", "--quiet", url, str(path))

    def add_revision(
        self,
        revision: str,
        down: str | None,
        upgrade: list[str],
        downgrade: list[str] | None = None,
        push: bool = True,
    ) -> str:
        source = revision_source(revision, down, upgrade, downgrade)
        (self.path / "alembic/versions" / f"{revision}.py").write_text(source)
        return self.commit(f"add revision {revision}", push)

    def commit(self, message: str, push: bool = True) -> str:
        git("add", "--all", cwd=self.path)
        git(
            "-c", "user.name=dev", "-c", "user.email=dev@x", "commit", "-qm", message, cwd=self.path
        )
        if push:
            git("push", "--quiet", "origin", "HEAD:main", cwd=self.path)
        return git("rev-parse", "HEAD", cwd=self.path)


async def deploy(
    client: httpx.AsyncClient,
    token: str,
    project_id: str,
    environment: str,
    commit: str,
    deployment_id: str,
    **extra: Any,
) -> httpx.Response:
    return await client.post(
        f"/api/v1/projects/{project_id}/deployments",
        json={
            "environment": environment,
            "commit_sha": commit,
            "deployment_id": deployment_id,
            **extra,
        },
        headers=bearer(token),
    )


async def active_project(
    client: httpx.AsyncClient, token: str, slug: str, environments: list[str] | None = None
) -> tuple[dict[str, Any], str]:
    """A hatched project and its deploy token."""
    extra = {"environments": environments} if environments else {}
    created = await create_project(client, token, slug, **extra)
    run = await wait_for_run(client, token, created["run"]["id"])
    assert run["status"] == "succeeded", run
    return await get_project(client, token, created["project"]["id"]), run["result"]["deploy_token"]


def run_cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hatchery.cli", *args, "--url", url, "--token", token],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
