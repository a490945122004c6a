"""Faults that lost data or lied: a restore that left things behind, two migrators after a
crash, a CLI that called a passing outage a refusal, a baseline without its history,
reserved names, and outages answered with 500s."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import Stack, stack
from bench.common import start_api as start_bench_api
from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer, start, stop
from tests.e2e.helpers import (
    WorkingCopy,
    active_project,
    create_project,
    deploy,
    get_project,
    wait_for_run,
)
from tests.e2e.test_migrations import database, revisions
from tests.sse import follow

ROOT = Path(__file__).resolve().parents[2]
STATE = """
SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
  SELECT format('%s %s.%s', c.relkind, n.nspname, c.relname) AS line
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
) relations
"""


def state(postgres: EmbeddedPostgres, db: str) -> tuple[str, dict[str, str]]:
    """Every relation of the database, and a checksum of every table's rows."""
    tables = postgres.psql(
        db,
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    ).split()
    rows = {
        t: postgres.psql(
            db, f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
        )
        for t in tables
    }
    return postgres.psql(db, STATE), rows


async def test_a_restore_leaves_exactly_the_backups_state_and_history_follows_it(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "restore-all", ["staging"])
    staging = database(project, "staging")
    postgres.psql(
        staging, "INSERT INTO item (name) SELECT 'row ' || g FROM generate_series(1, 40) g"
    )
    before = state(postgres, staging)
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = repo.add_revision(
        "0002", "0001",
        ["CREATE TABLE extra (id serial PRIMARY KEY, label text)",
         "INSERT INTO extra (label) SELECT md5(g::text) FROM generate_series(1, 350) g",
         "CREATE VIEW extra_view AS SELECT count(*) FROM extra"],
        ["DROP VIEW extra_view", "DROP TABLE extra"],
    )  # fmt: skip
    run = await wait_for_run(
        live,
        token,
        (await deploy(live, token, project["id"], "staging", commit, "r1")).json()["id"],
    )
    assert run["status"] == "succeeded", run["error"]
    postgres.psql(
        staging,
        f"SET ROLE {staging}; CREATE TABLE made_later (id int); DELETE FROM item WHERE id < 5",
    )
    base = f"/api/v1/projects/{project['id']}/environments/staging"
    backups = (await live.get(f"{base}/backups", headers=bearer(live_admin_token))).json()["items"]
    pre_deploy = next(b for b in backups if b["revision"] == "0001")

    response = await live.post(
        f"{base}/rollbacks", json={"backup_id": pre_deploy["id"]}, headers=bearer(live_admin_token)
    )
    restored = await wait_for_run(live, live_admin_token, response.json()["id"])
    assert restored["status"] == "succeeded", restored["error"]
    assert state(postgres, staging) == before  # relations and every row, nothing more
    history = await revisions(live, live_admin_token, project, "staging")
    assert history["current"] == "0001" and history["pending"] == ["0002"]
    assert [r["applied"] is not None for r in history["history"]] == [True, False]

    again = await deploy(live, token, project["id"], "staging", commit, "r2")
    assert (await wait_for_run(live, token, again.json()["id"]))["status"] == "succeeded"
    assert postgres.psql(staging, "SELECT count(*) FROM extra").strip() == "350"


class ActivitySampler(threading.Thread):
    """How many migrator sessions are active in a database, sampled every 20 ms."""

    def __init__(self, postgres: EmbeddedPostgres, db: str) -> None:
        super().__init__(daemon=True)
        self.postgres, self.db, self.peak, self.seen = postgres, db, 0, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'hatchery-migrator-%' AND state <> 'idle'"
        )
        while not self.stopped.wait(0.02):
            count = int(self.postgres.psql(self.db, query))
            self.peak, self.seen = max(self.peak, count), self.seen + (count > 0)


async def test_a_killed_migrators_statement_never_runs_beside_the_next_migration(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    tmp_path: Path,
) -> None:
    log = scratch_dir / "two-migrators.log"
    # One job at a time: the deploy that waits for the lock goes to the other worker.
    doomed = start(["worker"], {**isolated_env, "HATCHERY_WORKER_MAX_JOBS": "1"}, log)
    waiting = None
    sampler = None
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            project, token = await active_project(client, live_admin_token, "orphans", ["staging"])
            repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
            sleepy = (
                "DO $$ BEGIN IF to_regclass('fast_lane') IS NULL THEN PERFORM pg_sleep(30); "
                "END IF; END $$"
            )
            repo.add_revision("0002", "0001", [sleepy], ["SELECT 1"], push=False)
            commit = repo.add_revision(
                "0003", "0002", ["CREATE TABLE after (id int)"], ["SELECT 1"]
            )
            staging = database(project, "staging")
            sampler = ActivitySampler(postgres, staging)
            sampler.start()
            first = (await deploy(client, token, project["id"], "staging", commit, "o1")).json()
            await follow(
                client, first["id"], token,
                until=lambda f: f.event == "step.started" and f.data["step"] == "migrate",
            )  # fmt: skip
            await asyncio.sleep(1)  # its statement is under way
            waiting = start(["worker"], isolated_env, log)
            # The next migration does not sleep.
            postgres.psql(staging, f"SET ROLE {staging}; CREATE TABLE fast_lane (id int)")
            second = (await deploy(client, token, project["id"], "staging", commit, "o2")).json()
            await follow(
                client, second["id"], token,
                until=lambda f: f.event == "step.log" and "waiting for another" in str(f.data),
            )  # fmt: skip
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            run = await wait_for_run(client, live_admin_token, second["id"], timeout=120)
    finally:
        if sampler is not None:
            sampler.stopped.set()
            sampler.join()
        stop(doomed)
        if waiting is not None:
            stop(waiting)
    assert run["status"] == "succeeded", run["error"]
    assert postgres.psql(staging, "SELECT version_num FROM alembic_version").strip() == "0003"
    assert sampler.seen > 0
    assert sampler.peak <= 1, "two migrators changed the database at once"


@pytest.fixture
def own_stack(scratch_dir: Path) -> Iterator[Stack]:
    """A PostgreSQL and a Redis of this test's own, to stop and start at will."""
    env = {
        "HATCHERY_RUN_HEARTBEAT_SECONDS": "0.5",
        "HATCHERY_RUN_STALE_AFTER_SECONDS": "3",
        "HATCHERY_REAPER_INTERVAL_SECONDS": "1",
        "HATCHERY_WORKER_HEARTBEAT_SECONDS": "1",
        "HATCHERY_EXTRA_TEMPLATES_DIR": str(ROOT / "tests" / "templates"),
        "HATCHERY_LOG_LEVEL": "INFO",
    }
    with stack(**env) as found:
        yield found


def _cli(url: str, token: str, *args: str, timeout: float = 120) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hatchery.cli", *args, "--url", url, "--token", token],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HATCHERY_LOG_LEVEL": "WARNING"},
    )  # fmt: skip


async def test_the_cli_and_deploy_script_ride_out_an_outage_and_report_success(
    own_stack: Stack, tmp_path: Path
) -> None:
    worker = start(["worker"], own_stack.env)
    api, port = start_bench_api(own_stack.env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            created = await create_project(
                client, own_stack.admin_token, "outage", "slow-baseline", environments=["staging"]
            )
            run_id = created["run"]["id"]
            watcher = _cli(url, own_stack.admin_token, "runs", "watch", run_id)
            await asyncio.sleep(1.5)
            own_stack.redis.stop()
            await asyncio.sleep(4)
            own_stack.redis.start()
            output, _ = await asyncio.to_thread(watcher.communicate, timeout=120)
            run = await wait_for_run(client, own_stack.admin_token, run_id, timeout=120)
    finally:
        stop(api)
        stop(worker)
    assert run["status"] == "succeeded", run["error"]
    assert watcher.returncode == 0, output


async def test_outages_answer_503_with_retry_after_and_a_run_survives_them(
    own_stack: Stack,
) -> None:
    worker = start(["worker"], own_stack.env)
    api, port = start_bench_api(own_stack.env)
    token = own_stack.admin_token
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            created = await create_project(
                client, token, "survivor", "slow-baseline", environments=["staging", "production"]
            )
            run_id = created["run"]["id"]
            await follow(
                client, run_id, token,
                until=lambda f: f.event == "step.started" and f.data["step"] == "apply_baseline",
            )  # fmt: skip

            own_stack.postgres.stop()
            down = await client.get("/api/v1/projects", headers=bearer(token))
            await asyncio.sleep(4)  # past HATCHERY_RUN_STALE_AFTER_SECONDS
            own_stack.postgres.restart()
            run = await wait_for_run(client, token, run_id, timeout=120)

            own_stack.redis.stop()
            stream = await client.get(
                f"/api/v1/runs/{run_id}/events", headers={**bearer(token), "Last-Event-ID": "1-0"}
            )
            own_stack.redis.start()
    finally:
        stop(api)
        stop(worker)
    for answer in (down, stream):
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert int(answer.headers["retry-after"]) > 0
    assert run["error_code"] != "worker_lost", (run["error"], run)
    # The project's databases share the restarted server: a baseline running at that moment
    # fails, naming the cause.
    causes = {"control_database_unavailable", "database_unavailable"}
    assert run["status"] == "succeeded" or run["error_code"] in causes, (run["error"], run)


async def test_a_baseline_that_landed_before_a_crash_has_its_history_after_the_retry(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
) -> None:
    log = scratch_dir / "baseline-crash.log"
    doomed = start(["worker"], isolated_env, log)
    survivor = None
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            created = await create_project(client, live_admin_token, "half-based", "slow-baseline")
            project_id, run_id = created["project"]["id"], created["run"]["id"]
            await follow(
                client, run_id, live_admin_token,
                until=lambda f: f.event == "step.progress"
                and "staging: applied" in f.data.get("message", ""),
            )  # fmt: skip
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            survivor = start(["worker"], isolated_env, log)
            lost = await wait_for_run(client, live_admin_token, run_id, timeout=60)
            assert lost["error_code"] == "worker_lost"
            retry = await client.post(
                f"/api/v1/projects/{project_id}/initialization/retry",
                headers=bearer(live_admin_token),
            )
            resumed = await wait_for_run(client, live_admin_token, retry.json()["id"])
            assert resumed["status"] == "succeeded", resumed["error"]
            project = await get_project(client, live_admin_token, project_id)
            for env in ("staging", "production"):
                listed = await revisions(client, live_admin_token, project, env)
                assert listed["history"][0]["applied"] is not None, (env, listed)
    finally:
        stop(doomed)
        if survivor is not None:
            stop(survivor)


async def test_a_slug_postgresql_reserves_is_refused_naming_the_field(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    response = await live.post(
        "/api/v1/projects",
        json={"slug": "pg-stats", "name": "x", "template": "fastapi-service"},
        headers=bearer(live_admin_token),
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["body.slug"]
