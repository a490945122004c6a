"""Projects' migrations run the way their authors run them: their alembic.ini, env.py and
dependencies, in a child process, isolated from Hatchery. Each layout is adopted, deployed
to staging then production, dry-run, listed, rolled back one revision, restored, and
compared with `alembic upgrade head` run the project's way on a fresh database."""

import asyncio
from pathlib import Path
from typing import Any

import httpx

from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer
from tests.e2e.helpers import deploy, get_project, git
from tests.e2e.repositories import (
    PASSWORD,
    adopt,
    alembic_directly,
    commit_tree,
    database,
    finished,
    shape,
)

ENV_FROM_SETTINGS = """\
from alembic import context
from sqlalchemy import create_engine, pool

from app.settings import database_url

if context.is_offline_mode():
    context.configure(url=database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""

SETTINGS = """\
import os


def database_url() -> str:
    e = os.environ
    return (
        f"postgresql+psycopg2://{e['POSTGRES_USER']}:{e['POSTGRES_PASSWORD']}"
        f"@{e['POSTGRES_SERVER']}:{e['POSTGRES_PORT']}/{e['POSTGRES_DB']}"
    )
"""

HEADER = """\
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}
"""

# backend/alembic.ini names its script_location `alembic`, a directory Hatchery's own
# working directory also has; a named section; revisions that import `inflection`, which
# Hatchery does not depend on; an env.py building its URL from POSTGRES_* settings; an ORM
# data migration with no offline SQL; and CREATE INDEX CONCURRENTLY in an autocommit block.
LAYOUT = {
    "backend/alembic.ini": "[core]\nscript_location = alembic\nprepend_sys_path = .\n",
    "backend/pyproject.toml": (
        '[project]\nname = "layout"\nversion = "0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["alembic", "sqlalchemy", "psycopg2-binary", "inflection"]\n'
    ),
    "backend/app/__init__.py": "",
    "backend/app/settings.py": SETTINGS,
    "backend/alembic/env.py": ENV_FROM_SETTINGS,
    "backend/alembic/versions/0001_people.py": HEADER.format(revision="0001", down=None)
    + """
import inflection


def upgrade() -> None:
    op.create_table(
        inflection.tableize("Person"),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text),
    )
    op.execute("INSERT INTO people (name, email) VALUES ('Ada', 'ada@x'), ('Alan', 'alan@x')")


def downgrade() -> None:
    op.drop_table("people")
""",
    "backend/alembic/versions/0002_slugs.py": HEADER.format(revision="0002", down="0001")
    + """
from sqlalchemy.orm import Session, declarative_base

Base = declarative_base()


class Person(Base):
    __tablename__ = "people"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.Text)
    slug = sa.Column(sa.Text)


def upgrade() -> None:
    op.add_column("people", sa.Column("slug", sa.Text))
    session = Session(bind=op.get_bind())
    for person in session.query(Person):
        person.slug = person.name.lower()
    session.flush()


def downgrade() -> None:
    op.drop_column("people", "slug")
""",
    "backend/alembic/versions/0003_email_index.py": HEADER.format(revision="0003", down="0002")
    + """

def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_people_email", "people", ["email"], postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_people_email", table_name="people", postgresql_concurrently=True)
""",
}
LAYOUT_SETTINGS = {
    "section": "core",
    "variables": {
        "POSTGRES_USER": "{user}",
        "POSTGRES_PASSWORD": "{password}",
        "POSTGRES_SERVER": "{host}",
        "POSTGRES_PORT": "{port}",
        "POSTGRES_DB": "{database}",
    },
}
# A later commit: 0004 lands on its own, then 0005 fails after its concurrent index.
LAYOUT_BROKEN = {
    "backend/alembic/versions/0004_note.py": HEADER.format(revision="0004", down="0003")
    + """

def upgrade() -> None:
    op.add_column("people", sa.Column("note", sa.Text))


def downgrade() -> None:
    op.drop_column("people", "note")
""",
    "backend/alembic/versions/0005_halfway.py": HEADER.format(revision="0005", down="0004")
    + """

def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_people_name", "people", ["name"], postgresql_concurrently=True)
    op.execute("ALTER TABLE no_such_table ADD COLUMN x int")


def downgrade() -> None:
    pass
""",
}

ASYNC_META_ENV = """\
import asyncio
import os

from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


def run(connection) -> None:
    connection.execute(text("CREATE SCHEMA IF NOT EXISTS meta"))
    connection.commit()
    context.configure(connection=connection, version_table="ddl_version",
                      version_table_schema="meta")
    with context.begin_transaction():
        context.run_migrations()


async def main() -> None:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=os.environ["DATABASE_URL"], literal_binds=True,
                      version_table="ddl_version", version_table_schema="meta")
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(main())
"""
# An async env.py keeping its revision in meta.ddl_version; its first revision builds on
# tables made by hand before the team used Alembic.
LEGACY = "CREATE TABLE legacy_orders (id int PRIMARY KEY, total numeric NOT NULL)"
ASYNC_META = {
    "alembic.ini": "[alembic]\nscript_location = %(here)s/migrations\n",
    "requirements.txt": "alembic\nsqlalchemy[asyncio]\nasyncpg\n",
    "migrations/env.py": ASYNC_META_ENV,
    "migrations/versions/a1_invoices.py": HEADER.format(revision="a1", down=None)
    + """

def upgrade() -> None:
    op.add_column("legacy_orders", sa.Column("currency", sa.Text, server_default="EUR"))
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("legacy_orders.id"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invoices")
    op.drop_column("legacy_orders", "currency")
""",
    "migrations/versions/a2_paid.py": HEADER.format(revision="a2", down="a1")
    + """

def upgrade() -> None:
    op.add_column("invoices", sa.Column("paid", sa.Boolean, server_default="false"))


def downgrade() -> None:
    op.drop_column("invoices", "paid")
""",
}


async def _deployed(
    live: httpx.AsyncClient, token: str, project: dict[str, Any], env: str, commit: str, ci: str
) -> dict[str, Any]:
    response = await deploy(live, token, project["id"], env, commit, ci)
    assert response.status_code == 202, response.text
    return await finished(live, token, response.json()["id"])


async def _rollback(
    live: httpx.AsyncClient, token: str, project: dict[str, Any], body: dict[str, str]
) -> dict[str, Any]:
    response = await live.post(
        f"/api/v1/projects/{project['id']}/environments/staging/rollbacks",
        json=body,
        headers=bearer(token),
    )
    assert response.status_code == 202, response.text
    return await finished(live, token, response.json()["id"])


async def _through_everything(
    live: httpx.AsyncClient,
    token: str,
    postgres: EmbeddedPostgres,
    repo: Path,
    slug: str,
    ini_dir: str,
    settings: dict[str, Any],
    base_sql: str,
    direct: tuple[str, ...],
    direct_env: dict[str, str],
    version_table: str,
) -> tuple[dict[str, Any], str, str]:
    """Adopt, dry-run, deploy staging then production, list, roll back one, restore; the
    production database ends like a fresh one migrated directly."""
    commit = git_head(repo)
    staging, staging_url = database(postgres, base_sql)
    production, production_url = database(postgres, base_sql)
    created = await adopt(
        live, token, slug, repo, [("staging", staging_url), ("production", production_url)],
        migrations=settings,
    )  # fmt: skip
    adopted = await finished(live, token, created["run"]["id"])
    assert adopted["status"] == "succeeded", adopted
    dependencies = next(s for s in adopted["steps"] if s["name"] == "dependencies")
    python = dependencies["output"]["python"]
    project = await get_project(live, token, created["project"]["id"])

    dry = await live.post(
        f"/api/v1/projects/{project['id']}/environments/staging/migrations",
        json={"target": "head", "dry_run": True},
        headers=bearer(token),
    )
    assert dry.status_code == 200, dry.text
    plan = dry.json()
    assert plan["current"] is None and plan["pending"], plan

    for env, ci in (("staging", "ci-s"), ("production", "ci-p")):
        run = await _deployed(live, token, project, env, commit, f"{slug}-{ci}")
        assert run["status"] == "succeeded", (env, run["error"])
    revisions = await live.get(
        f"/api/v1/projects/{project['id']}/environments/production/revisions",
        headers=bearer(token),
    )
    listed = revisions.json()
    assert listed["current"] == listed["head"] and listed["pending"] == [], listed
    assert all(r["applied"] for r in listed["history"]), listed

    fresh, fresh_url = database(postgres, base_sql)
    # As the team sets it: DATABASE_URL with the driver their env.py uses.
    direct_url = fresh_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    alembic_directly(python, repo / ini_dir, direct_url, *direct, env=fresh_env(direct_env, fresh))
    assert shape(postgres, production) == shape(postgres, fresh)
    head = listed["head"]
    assert postgres.psql(production, f"SELECT version_num FROM {version_table}").strip() == head

    previous = listed["history"][-2]["revision"]
    down = await _rollback(live, token, project, {"target_revision": previous})
    assert down["status"] == "succeeded", down["error"]
    assert postgres.psql(staging, f"SELECT version_num FROM {version_table}").strip() == previous
    backups = await live.get(
        f"/api/v1/projects/{project['id']}/environments/staging/backups", headers=bearer(token)
    )
    at_head = next(b for b in backups.json()["items"] if b["revision"] == head)
    restored = await _rollback(live, token, project, {"backup_id": at_head["id"]})
    assert restored["status"] == "succeeded", restored["error"]
    assert shape(postgres, staging) == shape(postgres, fresh)
    assert (await get_project(live, token, project["id"]))["environments"][0]["revision"] == head
    return plan, staging, staging_url


def git_head(repo: Path) -> str:
    return git("rev-parse", "HEAD", cwd=repo)


def fresh_env(variables: dict[str, str], name: str) -> dict[str, str]:
    return {k: v.replace("{database}", name) for k, v in variables.items()}


async def test_a_layout_with_its_own_settings_dependencies_and_offline_gaps(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, repos: Path
) -> None:
    repo = repos / "layout"
    commit_tree(repo, LAYOUT)
    direct_env = {
        "POSTGRES_USER": "team",
        "POSTGRES_PASSWORD": PASSWORD,
        "POSTGRES_SERVER": "127.0.0.1",
        "POSTGRES_PORT": str(postgres.port),
        "POSTGRES_DB": "{database}",
    }
    plan, staging, _ = await _through_everything(
        live, live_admin_token, postgres, repo, "layout", "backend", LAYOUT_SETTINGS, "",
        ("-n", "core", "upgrade", "head"), direct_env, "alembic_version",
    )  # fmt: skip
    # Offline SQL renders what it can and names what it cannot; the plan says what
    # commits on its own.
    assert [u["revision"] for u in plan["unrendered"]] == ["0002"], plan["unrendered"]
    assert "CREATE TABLE people" in plan["sql"] and "CONCURRENTLY" in plan["sql"]
    assert plan["not_all_or_nothing"] == ["0003"]
    assert postgres.psql(staging, "SELECT string_agg(slug, ',' ORDER BY id) FROM people") == (
        "ada,alan\n"
    )


async def test_a_revision_failing_after_a_concurrent_index_leaves_the_last_landed_revision(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, repos: Path
) -> None:
    repo = repos / "halfway"
    first = commit_tree(repo, LAYOUT)
    staging, staging_url = database(postgres)
    created = await adopt(
        live, live_admin_token, "halfway", repo, [("staging", staging_url)],
        migrations=LAYOUT_SETTINGS,
    )  # fmt: skip
    assert (await finished(live, live_admin_token, created["run"]["id"]))["status"] == "succeeded"
    project = await get_project(live, live_admin_token, created["project"]["id"])
    assert (await _deployed(live, live_admin_token, project, "staging", first, "h-1"))[
        "status"
    ] == "succeeded"
    broken = commit_tree(repo, LAYOUT_BROKEN, "two more")
    run = await _deployed(live, live_admin_token, project, "staging", broken, "h-2")

    assert run["status"] == "failed"
    assert run["result"]["not_all_or_nothing"] == ["0005"]
    failed = next(s for s in run["steps"] if s["status"] == "failed")
    assert failed["name"] == "migrate"
    assert "0005" in failed["error"] and "no_such_table" in failed["error"]
    assert "ALTER TABLE no_such_table" in failed["error"]  # the failing statement
    assert "stays at 0004" in failed["error"]
    details = failed["output"]
    assert details["type"] == "UndefinedTable" and details["revision"] == "0005"
    assert details["statement"] == "ALTER TABLE no_such_table ADD COLUMN x int"
    assert "0005_halfway.py" in details["traceback"] and details["landed"] == ["0004"]
    assert postgres.psql(staging, "SELECT version_num FROM alembic_version").strip() == "0004"
    project = await get_project(live, live_admin_token, project["id"])
    assert project["environments"][0]["revision"] == "0004"
    listed = (
        await live.get(
            f"/api/v1/projects/{project['id']}/environments/staging/revisions",
            headers=bearer(live_admin_token),
        )
    ).json()
    applied = {r["revision"]: r["applied"] is not None for r in listed["history"]}
    assert applied == {"0001": True, "0002": True, "0003": True, "0004": True, "0005": False}


async def test_an_async_env_py_with_its_own_version_table_on_tables_made_before_alembic(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, repos: Path
) -> None:
    repo = repos / "async-meta"
    commit_tree(repo, ASYNC_META)
    plan, staging, _ = await _through_everything(
        live, live_admin_token, postgres, repo, "async-meta", ".", {}, LEGACY,
        ("upgrade", "head"), {}, "meta.ddl_version",
    )  # fmt: skip
    assert "ddl_version" in plan["sql"] and "legacy_orders" in plan["sql"]
    assert postgres.psql(staging, "SELECT to_regclass('public.alembic_version')").strip() == ""


async def test_two_projects_migrate_in_one_worker_at_the_same_time(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, repos: Path
) -> None:
    projects = []
    for name in ("twin-a", "twin-b"):
        repo = repos / name
        commit_tree(repo, ASYNC_META)
        _, url = database(postgres, LEGACY)
        created = await adopt(live, live_admin_token, name, repo, [("staging", url)])
        await finished(live, live_admin_token, created["run"]["id"])
        projects.append((await get_project(live, live_admin_token, created["project"]["id"]), repo))
    runs = await asyncio.gather(
        *(
            _deployed(live, live_admin_token, p, "staging", git_head(r), f"{p['slug']}-1")
            for p, r in projects
        )
    )
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"], [r["error"] for r in runs]
    started = sorted((r["started_at"], r["finished_at"]) for r in runs)
    assert started[1][0] < started[0][1], "the two migrations did not overlap"
