"""Staging refreshed from production, masked: through the real api and workers, on real
PostgreSQL. A worker killed while it masks leaves staging exactly as it was."""

import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer, start, stop
from tests.e2e.helpers import (
    WorkingCopy,
    active_project,
    deploy,
    git,
    run_cli,
    wait_for_run,
)
from tests.sse import follow

SCHEMA = [
    "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, "
    "password_hash text NOT NULL, name text)",
    "CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users(id), "
    "total numeric(10,2) NOT NULL)",
    "CREATE TABLE subscriptions (id serial PRIMARY KEY, "
    "email text NOT NULL REFERENCES users(email), plan text NOT NULL)",
]
ROWS = """
INSERT INTO users (email, password_hash, name)
  SELECT 'person' || g || '@real-customer.com', md5('secret' || g), 'Person ' || g
  FROM generate_series(1, 20000) g;
INSERT INTO orders (user_id, total) SELECT 1 + g % 20000, g % 997 FROM generate_series(1, 25000) g;
INSERT INTO subscriptions (email, plan)
  SELECT 'person' || (1 + g * 4) || '@real-customer.com', 'pro' FROM generate_series(0, 4999) g;
"""
CHECKSUM = """
SELECT string_agg(t || ':' || c, ' ' ORDER BY t) FROM (
  SELECT 'users' t, md5(string_agg(u::text, ',' ORDER BY u.id)) c FROM users u
  UNION ALL SELECT 'orders', md5(string_agg(o::text, ',' ORDER BY o.id)) FROM orders o
  UNION ALL SELECT 'subscriptions', md5(string_agg(s::text, ',' ORDER BY s.id)) FROM subscriptions s
) x
"""


async def databases(engine: AsyncEngine, project_id: str) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT name, database_name FROM environment WHERE project_id = :p"),
            {"p": uuid.UUID(project_id)},
        )
        return dict(rows.all())


def values(postgres: EmbeddedPostgres, database: str, sql: str) -> set[str]:
    return set(postgres.psql(database, sql).split())


async def test_staging_is_refreshed_from_production_masked_and_a_killed_refresh_changes_nothing(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    engine: AsyncEngine,
    repos: Path,
) -> None:
    # Small batches: the masking takes long enough to be killed in the middle.
    env = {**isolated_env, "HATCHERY_REFRESH_BATCH_PAGES": "2"}
    log = scratch_dir / "refresh-workers.log"
    worker: subprocess.Popen[bytes] | None = start(["worker"], env, log)
    headers = bearer(live_admin_token)
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            project, _ = await active_project(client, live_admin_token, "refreshed")
            pid = project["id"]
            names = await databases(engine, pid)
            copy = WorkingCopy(project["repository_url"], repos / "refreshed")
            commit = copy.add_revision("0002_shop", "0001", SCHEMA)
            for environment in ("staging", "production"):
                response = await deploy(
                    client, live_admin_token, pid, environment, commit, f"d-{environment}"
                )
                run = await wait_for_run(client, live_admin_token, response.json()["id"])
                assert run["status"] == "succeeded", run
            postgres.psql(names["production"], ROWS)
            postgres.psql(
                names["staging"],
                "INSERT INTO users (email, password_hash) VALUES ('qa@staging.test', 'x')",
            )
            production_before = postgres.psql(names["production"], CHECKSUM)
            staging_before = postgres.psql(names["staging"], CHECKSUM)

            base = f"/api/v1/projects/{pid}/environments"
            rules = {"rules": [
                {"table": "public.users", "column": "email", "strategy": "email"},
                {"table": "subscriptions", "column": "email", "strategy": "email"},
                {"table": "public.users", "column": "name", "strategy": "fake:name"},
            ]}  # fmt: skip
            response = await client.put(f"{base}/staging/masking", json=rules, headers=headers)
            assert response.status_code == 200, response.text

            # The plan, before anything is copied: the rules, and password_hash by default.
            response = await client.post(
                f"{base}/staging/refreshes", json={"from": "production", "dry_run": True},
                headers=headers,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            plan = {
                (c["table"], c["column"]): (c["strategy"], c["rows"])
                for c in response.json()["columns"]
            }
            assert plan == {
                ("public.users", "email"): ("email", 20000),
                ("public.users", "password_hash"): ("hash", 20000),
                ("public.users", "name"): ("fake:name", 20000),
                ("public.subscriptions", "email"): ("email", 5000),
            }
            shown = run_cli(
                isolated_api, live_admin_token, "refresh", "--project", "refreshed",
                "--env", "staging", "--from", "production", "--dry-run",
            )  # fmt: skip
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert "public.users.password_hash  text  hash  20000 rows" in shown.stdout

            # Production is last in promotion order: never refreshed.
            response = await client.post(
                f"{base}/production/refreshes", json={"from": "staging"}, headers=headers
            )
            assert response.status_code == 409, response.text

            # Killed while it masks: staging is exactly as it was.
            response = await client.post(
                f"{base}/staging/refreshes", json={"from": "production"}, headers=headers
            )
            assert response.status_code == 202, response.text
            doomed_run = response.json()["id"]
            await follow(
                client, doomed_run, live_admin_token,
                until=lambda f: f.event == "step.progress" and f.data["step"] == "mask",
            )  # fmt: skip
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            worker = start(["worker"], env, log)
            run = await wait_for_run(client, live_admin_token, doomed_run, timeout=60)
            assert run["status"] == "failed" and run["error_code"] == "worker_lost", run
            assert postgres.psql(names["staging"], CHECKSUM) == staging_before
            assert postgres.psql(names["production"], CHECKSUM) == production_before

            # Tried again, from the command line: it lands.
            done = run_cli(
                isolated_api, live_admin_token, "refresh", "--project", "refreshed",
                "--env", "staging", "--from", "production", "--wait",
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            assert "  mask done" in done.stdout and "  swap done" in done.stdout
            run_id = done.stdout.split()[1].rstrip(":")
            run = await wait_for_run(client, live_admin_token, run_id)
            assert run["status"] == "succeeded", run
    finally:
        if worker is not None:
            stop(worker)

    report = run["result"]["verification"]
    assert report["rows_equal"] and report["rows"]["public.users"] == 20000
    assert report["recounted"] == {"public.users": 20000, "public.subscriptions": 5000}
    assert report["rows"]["public.orders"] == 25000
    assert not any(report["source_values_left"].values()) and report["constraints_not_valid"] == 0
    assert run["result"]["masking"]["rows"] == 25000  # 20000 users and 5000 subscriptions

    staging, production = names["staging"], names["production"]
    assert postgres.psql(production, CHECKSUM) == production_before  # never written
    for column in ("email", "password_hash", "name"):
        left = values(postgres, production, f"SELECT {column} FROM users") & values(
            postgres, staging, f"SELECT {column} FROM users"
        )
        assert column == "name" or not left, f"{column}: {sorted(left)[:3]}"
    assert (
        postgres.psql(
            staging, "SELECT count(*) FROM users WHERE email LIKE '%real-customer%'"
        ).strip()
        == "0"
    )
    assert (
        postgres.psql(staging, "SELECT count(*) FROM users WHERE email = 'qa@staging.test'").strip()
        == "0"
    )
    counts = postgres.psql(
        staging,
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders), "
        "(SELECT count(*) FROM subscriptions)",
    )
    assert counts.strip() == "20000|25000|5000"
    # Every subscription still finds its (masked) user: the same email masked alike.
    orphans = (
        "SELECT count(*) FROM subscriptions s LEFT JOIN users u USING (email) WHERE u.id IS NULL"
    )
    assert postgres.psql(staging, orphans).strip() == "0"
    constraints = postgres.psql(
        staging,
        "SELECT string_agg(format('%s:%s:%s', conname, contype, convalidated), ' ') "
        "FROM pg_constraint WHERE conrelid::regclass::text IN ('users', 'subscriptions', 'orders')",
    )
    for name in (
        "users_email_key:u:t",
        "subscriptions_email_fkey:f:t",
        "orders_user_id_fkey:f:t",
    ):
        assert name in constraints
    # The old staging database is kept as the way back; the scratch one is gone.
    left_behind = postgres.psql(
        "postgres",
        "SELECT string_agg(datname, ' ') FROM pg_database WHERE datname LIKE 'hatchery\\_%'",
    )
    assert "hatchery_previous_" in left_behind and "hatchery_scratch_" not in left_behind


async def test_a_deploy_outside_its_window_waits_scheduled_and_two_workers_start_it_once(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
    repos: Path,
) -> None:
    log = scratch_dir / "window-workers.log"
    headers = bearer(live_admin_token)
    workers = [start(["worker"], isolated_env, log) for _ in range(2)]
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            project, _ = await active_project(client, live_admin_token, "windowed")
            pid = project["id"]
            head = git(
                "rev-parse",
                "HEAD",
                cwd=WorkingCopy(project["repository_url"], repos / "windowed").path,
            )
            opens = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
            closes = opens + timedelta(minutes=5)
            spec = f"daily {opens:%H:%M:%S}-{closes:%H:%M:%S} UTC"
            response = await client.put(
                f"/api/v1/projects/{pid}/environments/staging/windows",
                json={"windows": [spec]}, headers=headers,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            assert response.json()["open_now"] is False
            assert datetime.fromisoformat(response.json()["next_open"]) == opens

            response = await deploy(client, live_admin_token, pid, "staging", head, "windowed-1")
            assert response.status_code == 202, response.text
            run = response.json()
            assert run["status"] == "scheduled"
            assert datetime.fromisoformat(run["not_before"]) == opens
            snapshot = await follow(
                client, run["id"], live_admin_token, until=lambda f: f.event == "snapshot"
            )
            assert snapshot[-1].data["run"]["status"] == "scheduled"

            done = await wait_for_run(client, live_admin_token, run["id"], timeout=60)
            assert done["status"] == "succeeded", done
            assert datetime.fromisoformat(done["started_at"]) >= opens
            assert datetime.fromisoformat(done["started_at"]) < opens + timedelta(seconds=5)
    finally:
        for worker in workers:
            stop(worker)
    started = [
        line
        for line in log.read_text().splitlines()
        if '"run_started"' in line and run["id"] in line
    ]
    assert len(started) == 1, started
