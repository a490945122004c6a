"""Bring your own service: an existing repository and databases, adopted end to end."""

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from hatchery.embedded import EmbeddedPostgres
from hatchery.plans.adopt import UNREACHABLE
from hatchery.projects import templates
from tests.conftest import bearer
from tests.e2e.helpers import deploy, get_project, git, revision_source, wait_for_run
from tests.sse import follow

PASSWORD = "adoptee-" + uuid.uuid4().hex


def service_repository(path: Path, revisions: list[tuple[str, str | None, list[str]]]) -> str:
    """A team's own service: the shipped template's Alembic setup plus `revisions`."""
    templates.render(
        templates.available()["fastapi-service"],
        path,
        {"project_name": "Own", "project_slug": "own"},
    )
    for revision, down, upgrade in revisions:
        (path / "alembic/versions" / f"{revision}.py").write_text(
            revision_source(revision, down, upgrade, ["SELECT 1"])
        )
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    git("add", "--all", cwd=path)
    git("-c", "user.name=team", "-c", "user.email=t@t", "commit", "-qm", "our service", cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def alembic(repo: Path, url: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=repo,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


def state(postgres: EmbeddedPostgres, database: str) -> str:
    """Everything in a database, schema and rows, as one string."""
    tables = postgres.psql(
        database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    ).split()
    rows = "".join(
        postgres.psql(database, f"SELECT coalesce(string_agg(t::text, ','), '') FROM {t} t")
        for t in tables
    )
    catalog = postgres.psql(
        database,
        "SELECT string_agg(attrelid::regclass || '.' || attname, ',' ORDER BY 1) "
        "FROM pg_attribute WHERE attrelid >= 16384 AND attnum > 0",
    )
    return "|".join([*tables, rows, catalog])


@pytest.fixture(scope="module")
def adoptee(postgres: EmbeddedPostgres) -> str:
    postgres.psql("postgres", f"CREATE ROLE adoptee LOGIN PASSWORD '{PASSWORD}'")
    return "adoptee"


def database(postgres: EmbeddedPostgres, owner: str) -> tuple[str, str]:
    name = f"own_{uuid.uuid4().hex[:8]}"
    postgres.psql("postgres", f"CREATE DATABASE {name} OWNER {owner}")
    return name, f"postgresql://{owner}:{PASSWORD}@127.0.0.1:{postgres.port}/{name}"


async def adopt(
    client: httpx.AsyncClient,
    token: str,
    slug: str,
    repository: str,
    environments: list[tuple[str, str]],
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/projects",
        json={
            "slug": slug,
            "name": slug,
            "adopt": {
                "repository_url": repository,
                "environments": [{"name": n, "database_url": u} for n, u in environments],
                **extra,
            },
        },
        headers=bearer(token),
    )
    assert response.status_code == 202, response.text
    assert PASSWORD not in response.text
    created: dict[str, Any] = response.json()
    return created


async def test_adopted_service_is_migrated_on_deploy_and_left_alone_on_delete(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, adoptee: str,
    repos: Path,
) -> None:  # fmt: skip
    repo = repos / "service"
    head = service_repository(repo, [("0002", "0001", ["CREATE TABLE widget (id int)"])])
    staging, staging_url = database(postgres, adoptee)
    production, production_url = database(postgres, adoptee)
    asyncpg_url = "postgresql+asyncpg://" + staging_url.split("://", 1)[1]
    alembic(repo, asyncpg_url, "upgrade", "0002")
    alembic(repo, "postgresql+asyncpg://" + production_url.split("://", 1)[1], "upgrade", "0001")

    created = await adopt(
        live, live_admin_token, "own-service", repo.as_uri(),
        [("staging", staging_url), ("production", production_url)],
    )  # fmt: skip
    steps = [
        "verify_repository", "dependencies", "verify_databases", "record_baseline",
        "issue_deploy_token",
    ]  # fmt: skip
    assert [s["name"] for s in created["run"]["steps"]] == [*steps, "finalize"]
    frames = await follow(live, created["run"]["id"], live_admin_token)
    assert frames[-1].data["status"] == "succeeded", [f.data for f in frames[-3:]]
    run = await wait_for_run(live, live_admin_token, created["run"]["id"])
    token = run["result"]["deploy_token"]

    project = await get_project(live, live_admin_token, created["project"]["id"])
    assert project["adopted"] is True and project["template"] is None
    assert project["repository_url"] == repo.as_uri()
    assert [(e["name"], e["revision"], e["database_name"]) for e in project["environments"]] == [
        ("staging", "0002", staging),
        ("production", "0001", production),
    ]
    assert PASSWORD not in str(project)

    response = await deploy(live, token, project["id"], "production", head, "own-1")
    assert response.status_code == 202, response.text
    assert (await wait_for_run(live, token, response.json()["id"]))["status"] == "succeeded"
    assert postgres.psql(production, "SELECT version_num FROM alembic_version").strip() == "0002"
    assert postgres.psql(production, "SELECT to_regclass('public.widget')").strip() == "widget"

    schema = await live.get(
        f"/api/v1/projects/{project['id']}/environments/staging/schema",
        headers=bearer(live_admin_token),
    )
    assert {t["name"] for t in schema.json()["tables"]} == {"item", "widget"}

    backups = postgres.psql(
        "hatchery",
        "SELECT count(*) FROM backup b JOIN environment e ON e.id = b.environment_id "
        f"WHERE e.project_id = '{project['id']}'",
    )
    assert backups.strip() == "1"
    before = (state(postgres, staging), state(postgres, production))
    deleted = await live.delete(
        f"/api/v1/projects/{project['id']}", headers=bearer(live_admin_token)
    )
    assert deleted.status_code == 202
    assert "left untouched" in deleted.json()["result"]["kept"]
    assert (await wait_for_run(live, live_admin_token, deleted.json()["id"]))[
        "status"
    ] == "succeeded"
    assert (state(postgres, staging), state(postgres, production)) == before
    assert git("rev-parse", "HEAD", cwd=repo) == head
    assert (await get_project(live, live_admin_token, project["id"]))["status"] == "deleted"
    backups = postgres.psql(
        "hatchery",
        "SELECT count(*) FROM backup b JOIN environment e ON e.id = b.environment_id "
        f"WHERE e.project_id = '{project['id']}'",
    )
    assert backups.strip() == "0"

    control = postgres.psql(
        "hatchery",
        "SELECT string_agg(t::text, '') FROM (SELECT * FROM project) t "
        "UNION ALL SELECT string_agg(e::text, '') FROM environment e "
        "UNION ALL SELECT string_agg(r::text, '') FROM run r "
        "UNION ALL SELECT string_agg(s::text, '') FROM step s",
    )
    assert PASSWORD not in control and PASSWORD.encode().hex() not in control


async def test_wrong_inputs_fail_clearly_and_write_nothing(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, adoptee: str,
    repos: Path,
) -> None:  # fmt: skip
    good = repos / "good"
    service_repository(good, [])
    bare = repos / "no-alembic"
    bare.mkdir()
    (bare / "README.md").write_text("no migrations here")
    git("init", "--quiet", "--initial-branch=main", cwd=bare)
    git("add", "--all", cwd=bare)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=bare)
    forked = repos / "forked"
    service_repository(forked, [("0002a", "0001", ["SELECT 1"]), ("0002b", "0001", ["SELECT 1"])])
    name, url = database(postgres, adoptee)
    alembic(good, "postgresql+asyncpg://" + url.split("://", 1)[1], "upgrade", "head")
    postgres.psql("postgres", f"CREATE ROLE weakling LOGIN PASSWORD '{PASSWORD}'")
    postgres.psql(name, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO weakling")
    weak_url = url.replace("adoptee:", "weakling:")
    before = state(postgres, name)

    cases = [
        (
            repos.joinpath("missing").as_uri(),
            url,
            "verify_repository",
            "does not appear to be a git repository",
        ),
        (bare.as_uri(), url, "verify_repository", "found none"),
        (forked.as_uri(), url, "verify_databases", "2 heads"),
        # One message for every connection failure: the api tells no host from another.
        (good.as_uri(), url.replace(PASSWORD, "wrong"), "verify_databases", UNREACHABLE),
        (good.as_uri(), weak_url, "verify_databases", "may not CREATE"),
    ]
    for index, (repository, database_url, step, cause) in enumerate(cases):
        created = await adopt(
            live, live_admin_token, f"wrong-{index}", repository, [("staging", database_url)]
        )
        run = await wait_for_run(live, live_admin_token, created["run"]["id"])
        failed = next(s for s in run["steps"] if s["status"] == "failed")
        assert (failed["name"], cause in failed["error"]) == (step, True), failed
        assert PASSWORD not in str(run)
    assert state(postgres, name) == before

    response = await live.post(
        "/api/v1/projects",
        json={"slug": "bad-url", "name": "x", "adopt": {"repository_url": good.as_uri(),
              "environments": [{"name": "staging", "database_url": "mysql://x@y/z"}]}},
        headers=bearer(live_admin_token),
    )  # fmt: skip
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.adopt.environments.0.database_url"


async def test_untracked_database_is_reported_and_stamped_only_when_asked(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, adoptee: str,
    repos: Path,
) -> None:  # fmt: skip
    repo = repos / "service"
    service_repository(repo, [])
    reported, reported_url = database(postgres, adoptee)
    stamped, stamped_url = database(postgres, adoptee)
    for name in (reported, stamped):
        # Made by hand long ago: the tables of revision 0001, no version table.
        postgres.psql(
            name, "SET ROLE adoptee; CREATE TABLE item (id bigint PRIMARY KEY, name text)"
        )

    plain = await adopt(
        live, live_admin_token, "untracked", repo.as_uri(), [("staging", reported_url)]
    )
    run = await wait_for_run(live, live_admin_token, plain["run"]["id"])
    baseline = next(s for s in run["steps"] if s["name"] == "record_baseline")
    assert baseline["output"]["environments"]["staging"] == {
        "revision": None,
        "untracked_tables": 1,
    }
    assert postgres.psql(reported, "SELECT to_regclass('public.alembic_version')").strip() == ""

    asked = await adopt(
        live, live_admin_token, "stamped", repo.as_uri(), [("staging", stamped_url)], stamp="0001"
    )
    run = await wait_for_run(live, live_admin_token, asked["run"]["id"])
    assert run["status"] == "succeeded"
    assert postgres.psql(stamped, "SELECT version_num FROM alembic_version").strip() == "0001"
    project = await get_project(live, live_admin_token, asked["project"]["id"])
    assert project["environments"][0]["revision"] == "0001"
