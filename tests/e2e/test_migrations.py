"""Migrations from deploy events, end to end on real api and worker processes."""

import asyncio
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer, start, stop
from tests.e2e.helpers import WorkingCopy, active_project, deploy, wait_for_run
from tests.sse import follow

WIDGETS = [
    "CREATE TABLE widget (id serial PRIMARY KEY, name text NOT NULL)",
    "ALTER TABLE item ADD COLUMN colour text",
    "INSERT INTO widget (name) VALUES ('sprocket'), ('gear')",
]


def database(project: dict[str, Any], environment: str) -> str:
    return f"{project['slug'].replace('-', '_')}_{project['id'].replace('-', '')[:8]}_{environment}"


def has_table(postgres: EmbeddedPostgres, db: str, table: str) -> bool:
    return postgres.psql(db, f"SELECT to_regclass('public.{table}')").strip() == table


def checksums(postgres: EmbeddedPostgres, db: str) -> dict[str, str]:
    tables = postgres.psql(
        db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    ).split()
    return {
        t: postgres.psql(
            db, f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
        )
        for t in tables
    }


async def revisions(
    client: httpx.AsyncClient, token: str, project: dict[str, Any], env: str
) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/projects/{project['id']}/environments/{env}/revisions", headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_deploy_upgrades_staging_then_production_is_gated(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    project, deploy_token = await active_project(live, live_admin_token, "deploy-flow")
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = repo.add_revision(
        "0002", "0001", WIDGETS, ["DROP TABLE widget", "ALTER TABLE item DROP COLUMN colour"]
    )

    early = await deploy(live, deploy_token, project["id"], "production", commit, "ci-prod-1")
    assert early.status_code == 409
    assert "staging" in early.json()["detail"]

    response = await deploy(live, deploy_token, project["id"], "staging", commit, "ci-1")
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["kind"] == "upgrade" and run["trigger"] == "deployment"
    assert [s["name"] for s in run["steps"]] == [
        "checkout",
        "dependencies",
        "preflight",
        "backup",
        "migrate",
        "record",
    ]
    again = await deploy(live, deploy_token, project["id"], "staging", commit, "ci-1")
    assert again.status_code == 200 and again.json()["id"] == run["id"]

    frames = await follow(live, run["id"], deploy_token)
    assert frames[-1].event == "end" and frames[-1].data["status"] == "succeeded", frames[-3:]
    progress = [f.data["message"] for f in frames if f.event == "step.progress"]
    assert any("0002" in message for message in progress)

    staging = database(project, "staging")
    assert has_table(postgres, staging, "widget")
    assert postgres.psql(staging, "SELECT count(*) FROM widget").strip() == "2"
    state = await revisions(live, live_admin_token, project, "staging")
    assert (state["current"], state["head"], state["pending"]) == ("0002", "0002", [])
    assert [r["revision"] for r in state["history"]] == ["0001", "0002"]
    assert state["history"][1]["applied"]["deployment_id"] == "ci-1"
    assert state["commit"] == commit

    finished = await wait_for_run(live, live_admin_token, run["id"])
    assert "CREATE TABLE widget" in finished["result"]["sql"]
    listed = (
        await live.get(
            f"/api/v1/projects/{project['id']}/environments/staging/backups",
            headers=bearer(live_admin_token),
        )
    ).json()["items"]
    assert len(listed) == 1 and listed[0]["revision"] == "0001" and listed[0]["size_bytes"] > 0

    accepted = await deploy(live, deploy_token, project["id"], "production", commit, "ci-prod-2")
    assert accepted.status_code == 202
    prod_run = await wait_for_run(live, live_admin_token, accepted.json()["id"])
    assert prod_run["status"] == "succeeded"
    assert has_table(postgres, database(project, "production"), "widget")


async def test_failing_revision_leaves_the_database_exactly_as_it_was(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "half-way")
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = repo.add_revision(
        "0002", "0001", ["CREATE TABLE gadget (id int)", "INSERT INTO no_such_table VALUES (1)"]
    )
    staging = database(project, "staging")
    before = checksums(postgres, staging)

    response = await deploy(live, token, project["id"], "staging", commit, "ci-fail")
    run = await wait_for_run(live, live_admin_token, response.json()["id"])

    assert run["status"] == "failed"
    assert "no_such_table" in run["error"] and "INSERT INTO no_such_table" in run["error"]
    assert not has_table(postgres, staging, "gadget")
    assert checksums(postgres, staging) == before
    assert postgres.psql(staging, "SELECT version_num FROM alembic_version").strip() == "0001"
    record = postgres.psql(
        "hatchery",
        "SELECT outcome, revision, failing_statement FROM migration_record "
        f"WHERE run_id = '{run['id']}'",
    ).strip()
    assert record == "failed|0002|INSERT INTO no_such_table VALUES (1)"


async def test_preflight_catches_changed_revisions_multiple_heads_and_unknown_commits(
    live: httpx.AsyncClient, live_admin_token: str, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "preflight")
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")

    baseline = repo.path / "alembic/versions/0001_create_item.py"
    baseline.write_text(baseline.read_text().replace('"item"', '"items"'))
    changed = repo.commit("rename a table in an applied revision")
    run = await wait_for_run(
        live,
        token,
        (await deploy(live, token, project["id"], "staging", changed, "d1")).json()["id"],
    )
    assert run["status"] == "failed"
    assert "0001 was changed after it was applied" in run["error"]

    forked = repo.add_revision("0003", "0002", ["SELECT 1"], push=False)
    repo.add_revision("0002", "0001", ["SELECT 1"], push=False)
    (repo.path / "alembic/versions/0004.py").write_text(
        (repo.path / "alembic/versions/0003.py").read_text().replace("'0003'", "'0004'")
    )
    baseline.write_text(baseline.read_text().replace('"items"', '"item"'))
    two_heads = repo.commit("two heads")
    assert forked
    run = await wait_for_run(
        live,
        token,
        (await deploy(live, token, project["id"], "staging", two_heads, "d2")).json()["id"],
    )
    assert run["status"] == "failed" and "2 heads" in run["error"]

    unknown = await deploy(live, token, project["id"], "staging", "deadbeef" * 5, "d3")
    assert unknown.status_code == 202
    run = await wait_for_run(live, token, unknown.json()["id"])
    assert run["status"] == "failed"
    assert (
        run["steps"][0]["name"] == "checkout" and "not in the project's repository" in run["error"]
    )


async def test_dry_run_returns_sql_and_touches_nothing(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    project, _ = await active_project(live, live_admin_token, "dry-run")
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = repo.add_revision("0002", "0001", WIDGETS)
    response = await live.post(
        f"/api/v1/projects/{project['id']}/environments/staging/migrations",
        json={"target": "head", "dry_run": True, "commit_sha": commit},
        headers=bearer(live_admin_token),
    )
    assert response.status_code == 200, response.text
    plan = response.json()
    assert (plan["current"], plan["target"], plan["pending"]) == ("0001", "0002", ["0002"])
    assert "CREATE TABLE widget" in plan["sql"] and "UPDATE alembic_version" in plan["sql"]
    assert not has_table(postgres, database(project, "staging"), "widget")
    runs = await live.get(
        f"/api/v1/projects/{project['id']}/runs", headers=bearer(live_admin_token)
    )
    assert [r["kind"] for r in runs.json()["items"]] == ["initialize"]


async def test_same_idempotency_key_on_a_migration_returns_the_same_run(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    project, _ = await active_project(live, live_admin_token, "idem-migrate", ["staging"])
    commit = WorkingCopy(project["repository_url"], tmp_path / "repo").add_revision(
        "0002", "0001", WIDGETS
    )
    headers = {**bearer(live_admin_token), "Idempotency-Key": f"migrate-{project['id']}"}
    migrate_url = f"/api/v1/projects/{project['id']}/environments/staging/migrations"
    real = {"target": "head", "commit_sha": commit}
    first = await live.post(migrate_url, json=real, headers=headers)
    again = await live.post(migrate_url, json=real, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert (await wait_for_run(live, live_admin_token, first.json()["id"]))["status"] == "succeeded"
    assert has_table(postgres, database(project, "staging"), "widget")


async def test_downgrade_and_restore_bring_back_the_earlier_schema_and_data(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "roll-back", ["staging"])
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    staging = database(project, "staging")
    postgres.psql(staging, "INSERT INTO item (name) VALUES ('keep me'), ('and me')")
    at_0001 = checksums(postgres, staging)
    commit = repo.add_revision(
        "0002", "0001", WIDGETS, ["DROP TABLE widget", "ALTER TABLE item DROP COLUMN colour"]
    )
    assert (
        await wait_for_run(
            live,
            token,
            (await deploy(live, token, project["id"], "staging", commit, "r1")).json()["id"],
        )
    )["status"] == "succeeded"
    postgres.psql(staging, "INSERT INTO widget (name) VALUES ('made at 0002')")
    backup_at_0001 = (
        await live.get(
            f"/api/v1/projects/{project['id']}/environments/staging/backups",
            headers=bearer(live_admin_token),
        )
    ).json()["items"][0]

    url = f"/api/v1/projects/{project['id']}/environments/staging/rollbacks"
    down = await live.post(url, json={"target_revision": "0001"}, headers=bearer(live_admin_token))
    assert down.status_code == 202, down.text
    run = await wait_for_run(live, live_admin_token, down.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    assert not has_table(postgres, staging, "widget")
    assert postgres.psql(staging, "SELECT version_num FROM alembic_version").strip() == "0001"
    assert (await revisions(live, live_admin_token, project, "staging"))["pending"] == ["0002"]

    restore = await live.post(
        url, json={"backup_id": backup_at_0001["id"]}, headers=bearer(live_admin_token)
    )
    assert restore.status_code == 202
    run = await wait_for_run(live, live_admin_token, restore.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    assert checksums(postgres, staging) == at_0001
    assert run["result"]["revision"] == "0001"


async def test_revision_without_a_downgrade_is_refused_before_anything_runs(
    live: httpx.AsyncClient, live_admin_token: str, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "no-way-back", ["staging"])
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = repo.add_revision("0002", "0001", ["CREATE TABLE oneway (id int)"], downgrade=None)
    await wait_for_run(
        live,
        token,
        (await deploy(live, token, project["id"], "staging", commit, "o1")).json()["id"],
    )
    response = await live.post(
        f"/api/v1/projects/{project['id']}/environments/staging/rollbacks",
        json={"target_revision": "0001"},
        headers=bearer(live_admin_token),
    )
    assert response.status_code == 409
    assert "0002" in response.json()["detail"]
    runs = await live.get(
        f"/api/v1/projects/{project['id']}/runs", headers=bearer(live_admin_token)
    )
    assert "downgrade" not in [r["kind"] for r in runs.json()["items"]]


async def test_admin_may_force_past_gating_and_it_is_audited(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "forced")
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = repo.add_revision("0002", "0001", ["CREATE TABLE forced (id int)"])
    as_ci = await deploy(live, token, project["id"], "production", commit, "f1", force=True)
    assert as_ci.status_code == 403
    forced = await deploy(
        live, live_admin_token, project["id"], "production", commit, "f2", force=True
    )
    assert forced.status_code == 202
    assert (await wait_for_run(live, live_admin_token, forced.json()["id"]))[
        "status"
    ] == "succeeded"
    audited = postgres.psql(
        "hatchery",
        "SELECT count(*) FROM audit_event "
        f"WHERE action = 'migration.forced' AND project_id = '{project['id']}'",
    )
    assert audited.strip() == "1"


async def test_fifty_concurrent_deploy_events_make_ten_runs_that_never_overlap(
    live: httpx.AsyncClient, live_admin_token: str, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "stampede", ["staging"])
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commits = []
    for i in range(2, 12):
        revision, down = f"{i:04d}", f"{i - 1:04d}"
        commits.append(repo.add_revision(revision, down, [f"CREATE TABLE t{i} (id int)"]))

    responses = await asyncio.gather(
        *(
            deploy(live, token, project["id"], "staging", commits[i % 10], f"stampede-{i % 10}")
            for i in range(50)
        )
    )
    assert {r.status_code for r in responses} <= {200, 202}
    run_ids = {r.json()["id"] for r in responses}
    assert len(run_ids) == 10
    runs = await asyncio.gather(*(wait_for_run(live, token, rid, timeout=180) for rid in run_ids))
    for run in runs:
        # A deployment of an older commit that arrives after a newer one is refused.
        stale = ("roll back instead", "applied here, is missing at")
        assert run["status"] == "succeeded" or (
            run["status"] == "failed" and any(reason in run["error"] for reason in stale)
        ), run
    spans = sorted(
        (run["steps"][0]["started_at"], run["steps"][-1]["finished_at"] or run["finished_at"])
        for run in runs
        if run["steps"][0]["started_at"]
    )
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, "two runs held the database at once"
    assert (await revisions(live, live_admin_token, project, "staging"))["current"] == "0011"


async def test_killed_worker_mid_migration_leaves_old_revision_and_frees_the_lock(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    tmp_path: Path,
) -> None:
    log = scratch_dir / "migration-crash-worker.log"
    doomed = start(["worker"], isolated_env, log)
    survivor = None
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            project, token = await active_project(
                client, live_admin_token, "mid-crash", ["staging"]
            )
            repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
            commit = repo.add_revision(
                "0002",
                "0001",
                ["CREATE TABLE slow (id int)", "SELECT pg_sleep(4)"],
                ["DROP TABLE slow"],
            )
            staging = database(project, "staging")
            response = await deploy(client, token, project["id"], "staging", commit, "k1")
            run_id = response.json()["id"]
            await follow(
                client, run_id, token,
                until=lambda f: f.event == "step.started" and f.data["step"] == "migrate",
            )  # fmt: skip
            await asyncio.sleep(1)
            locks = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            locks += f"WHERE l.locktype = 'advisory' AND d.datname = '{staging}'"
            assert postgres.psql("postgres", locks).strip() == "1"
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()

            survivor = start(["worker"], isolated_env, log)
            run = await wait_for_run(client, live_admin_token, run_id, timeout=30)
            assert run["status"] == "failed" and run["error_code"] == "worker_lost"

            deadline = time.monotonic() + 20
            while postgres.psql("postgres", locks).strip() != "0":
                assert time.monotonic() < deadline, "the advisory lock was never released"
                await asyncio.sleep(0.2)
            assert (
                postgres.psql(staging, "SELECT version_num FROM alembic_version").strip() == "0001"
            )
            assert not has_table(postgres, staging, "slow")

            retry = await deploy(client, token, project["id"], "staging", commit, "k2")
            assert (await wait_for_run(client, token, retry.json()["id"]))["status"] == "succeeded"
            assert has_table(postgres, staging, "slow")
    finally:
        stop(doomed)
        if survivor is not None:
            stop(survivor)


async def test_backups_are_pruned_by_count_but_never_the_newest(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
    tmp_path: Path,
) -> None:
    worker = start(
        ["worker"], {**isolated_env, "HATCHERY_BACKUP_KEEP_COUNT": "2"}, scratch_dir / "prune.log"
    )
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            project, token = await active_project(client, live_admin_token, "pruned", ["staging"])
            repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
            for i in range(2, 5):
                commit = repo.add_revision(
                    f"{i:04d}", f"{i - 1:04d}", [f"CREATE TABLE p{i} (id int)"]
                )
                run = await deploy(client, token, project["id"], "staging", commit, f"p{i}")
                assert (await wait_for_run(client, token, run.json()["id"]))[
                    "status"
                ] == "succeeded"
            listed = await client.get(
                f"/api/v1/projects/{project['id']}/environments/staging/backups",
                headers=bearer(live_admin_token),
            )
    finally:
        stop(worker)
    assert [b["revision"] for b in listed.json()["items"]] == ["0003", "0002"]
    files = sorted(
        (Path(isolated_env["HATCHERY_BACKUPS_DIR"]) / project["id"] / "staging").iterdir()
    )
    assert len(files) == 2
