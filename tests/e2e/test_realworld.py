"""Two public projects' migrations exactly as committed upstream
(../shared/fixtures/realworld, see its README): adopted, deployed to staging and
production, and ending with the schema and version their own `alembic upgrade head` left.

Both declare `requires-python >=3.14` and their env.py imports their application, which
this machine's Python 3.11 cannot run: auto-detected, their environment fails early and
says why; with an explicit requirements list and Hatchery's own env (no env.py), they pass.
"""

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer
from tests.e2e.helpers import deploy, get_project
from tests.e2e.repositories import adopt, commit_tree, database, finished, shape

ROOT = Path(__file__).resolve().parents[2]


def fixtures() -> Path:
    """../shared/fixtures/realworld beside this repository (or beside the one it was
    cloned from), or HATCHERY_REALWORLD_FIXTURES."""
    candidates = [Path(os.environ.get("HATCHERY_REALWORLD_FIXTURES", "/nonexistent"))]
    origin = subprocess.run(
        ["git", "-C", str(ROOT), "remote", "get-url", "origin"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    for base in (ROOT, Path(origin.removeprefix("file://")) if origin else None):
        if base is not None:
            candidates += [parent / "shared/fixtures/realworld" for parent in base.parents]
    found = next((c for c in candidates if (c / "README.md").is_file()), None)
    if found is None:
        pytest.fail(
            "../shared/fixtures/realworld is not on this machine: set HATCHERY_REALWORLD_FIXTURES"
        )
    return found


CASES = {
    "fastapi-template": {
        "ini": "backend/alembic.ini",
        "head": "fe56fa70289e",
        "requirements": ["alembic==1.20.1", "sqlalchemy==2.1.9", "sqlmodel", "psycopg[binary]"],
    },
    "polar": {
        "ini": "server/alembic.ini",
        "head": "a83cf131398d",
        "requirements": [
            "alembic==1.20.1", "sqlalchemy==2.1.9", "alembic-utils==0.8.8", "psycopg2-binary",
        ],
    },
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
async def test_a_public_project_adopts_and_deploys_as_committed_upstream(
    name: str,
    live: httpx.AsyncClient,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    repos: Path,
) -> None:
    case = CASES[name]
    source = fixtures() / name
    repo = repos / name
    shutil.copytree(source, repo)
    commit = commit_tree(repo, {}, f"{name} as committed upstream")
    _, staging_url = database(postgres)
    production, production_url = database(postgres)

    created = await adopt(
        live, live_admin_token, name, repo,
        [("staging", staging_url), ("production", production_url)], alembic_ini=case["ini"],
    )  # fmt: skip
    detected = await finished(live, live_admin_token, created["run"]["id"])
    failed = next(s for s in detected["steps"] if s["status"] == "failed")
    assert failed["name"] == "dependencies"
    assert "requires-python" in failed["error"] and ">=3.14" in failed["error"], failed["error"]

    project_id = created["project"]["id"]
    settings = await live.put(
        f"/api/v1/projects/{project_id}/migration-settings",
        json={"env_py": False, "requirements": case["requirements"]},
        headers=bearer(live_admin_token),
    )
    assert settings.status_code == 200, settings.text
    retry = await live.post(
        f"/api/v1/projects/{project_id}/initialization/retry", headers=bearer(live_admin_token)
    )
    adopted = await finished(live, live_admin_token, retry.json()["id"])
    assert adopted["status"] == "succeeded", adopted["error"]
    project = await get_project(live, live_admin_token, project_id)

    for env in ("staging", "production"):
        response = await deploy(live, live_admin_token, project_id, env, commit, f"{name}-{env}")
        assert response.status_code == 202, response.text
        run = await finished(live, live_admin_token, response.json()["id"])
        assert run["status"] == "succeeded", run["error"]
    expected = (source / "expected_shape.txt").read_text().splitlines()
    assert shape(postgres, production) == expected
    version = postgres.psql(production, "SELECT version_num FROM alembic_version").strip()
    assert version == case["head"]
    project = await get_project(live, live_admin_token, project_id)
    assert {e["revision"] for e in project["environments"]} == {case["head"]}
