"""Services with real Alembic layouts, as their teams commit them, for end-to-end tests:
adopted by Hatchery, then compared with `alembic upgrade head` run the project's way."""

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx

from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer
from tests.e2e.helpers import git, wait_for_run

# What `alembic upgrade head` leaves in a database: every column, index, constraint and
# extension (the query of ../shared/fixtures/realworld/README.md).
SHAPE = """
SELECT line FROM (
  SELECT 'column ' || c.table_schema || '.' || c.table_name || '.' || c.column_name || ' '
         || c.data_type || ' ' || c.is_nullable AS line
  FROM information_schema.columns c JOIN information_schema.tables t
       USING (table_schema, table_name)
  WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema') AND t.table_type = 'BASE TABLE'
  UNION ALL SELECT 'index ' || schemaname || '.' || indexname FROM pg_indexes
  WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL SELECT 'constraint ' || n.nspname || '.' || r.relname || '.' || con.conname || ' '
         || con.contype::text
  FROM pg_constraint con JOIN pg_class r ON r.oid = con.conrelid
       JOIN pg_namespace n ON n.oid = r.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL SELECT 'extension ' || extname FROM pg_extension
) s ORDER BY 1
"""
PASSWORD = "team-" + uuid.uuid4().hex


def shape(postgres: EmbeddedPostgres, database: str) -> list[str]:
    return postgres.psql(database, SHAPE).splitlines()


def commit_tree(path: Path, files: dict[str, str], message: str = "ours") -> str:
    """Write `files` into the working tree at `path` (a git repository made if absent)
    and commit them."""
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    if not (path / ".git").exists():
        git("init", "--quiet", "--initial-branch=main", cwd=path)
    git("add", "--all", cwd=path)
    git("-c", "user.name=team", "-c", "user.email=t@t", "commit", "-qm", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def team_role(postgres: EmbeddedPostgres) -> str:
    """A database owner that is no superuser, as a team's service would have."""
    if not postgres.psql("postgres", "SELECT 1 FROM pg_roles WHERE rolname = 'team'").strip():
        postgres.psql("postgres", f"CREATE ROLE team LOGIN PASSWORD '{PASSWORD}'")
    return "team"


def database(postgres: EmbeddedPostgres, sql: str = "") -> tuple[str, str]:
    """A fresh database owned by the team's role (with `sql` run in it as that role)."""
    name = f"svc_{uuid.uuid4().hex[:10]}"
    postgres.psql("postgres", f"CREATE DATABASE {name} OWNER {team_role(postgres)}")
    if sql:
        postgres.psql(name, f"SET ROLE team; {sql}")
    return name, f"postgresql://team:{PASSWORD}@127.0.0.1:{postgres.port}/{name}"


async def adopt(
    client: httpx.AsyncClient,
    token: str,
    slug: str,
    repository: Path,
    environments: list[tuple[str, str]],
    **adopt: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/projects",
        json={
            "slug": slug,
            "name": slug,
            "adopt": {
                "repository_url": repository.as_uri(),
                "environments": [{"name": n, "database_url": u} for n, u in environments],
                **adopt,
            },
        },
        headers=bearer(token),
    )
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def finished(client: httpx.AsyncClient, token: str, run_id: str) -> dict[str, Any]:
    return await wait_for_run(client, token, run_id, timeout=300)


def alembic_directly(
    python: str, ini_dir: Path, url: str, *args: str, env: dict[str, str] | None = None
) -> None:
    """`alembic ... upgrade head` the project's way: from the ini's directory, with the
    project's own Python environment."""
    result = subprocess.run(
        [python, "-m", "alembic", *args],
        cwd=ini_dir,
        env={**os.environ, "DATABASE_URL": url, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
