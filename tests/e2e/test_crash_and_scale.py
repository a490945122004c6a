"""A worker killed mid-step, keys of one project against another, and many projects at once."""

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx

from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis
from hatchery.events import stream
from hatchery.queue import close, connect, enqueue, result
from tests.conftest import bearer, start, stop
from tests.e2e.helpers import create_project, get_project, wait_for_run
from tests.sse import follow


async def test_killed_worker_is_reaped_and_retry_duplicates_nothing(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
) -> None:
    log = scratch_dir / "crash-worker.log"
    doomed = start(["worker"], isolated_env, log)
    survivor: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            created = await create_project(client, live_admin_token, "crash-me", "slow-baseline")
            project_id, run_id = created["project"]["id"], created["run"]["id"]
            await follow(
                client,
                run_id,
                live_admin_token,
                until=lambda f: f.event == "step.started" and f.data["step"] == "apply_baseline",
            )
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            killed_at = time.monotonic()

            survivor = start(["worker"], isolated_env, log)
            run = await wait_for_run(client, live_admin_token, run_id, timeout=30)
            assert run["status"] == "failed" and run["error_code"] == "worker_lost"
            assert time.monotonic() - killed_at < 15
            lost = next(s for s in run["steps"] if s["status"] == "failed")
            assert lost["name"] == "apply_baseline" and "worker_lost" in lost["error"]
            assert (await get_project(client, live_admin_token, project_id))["status"] == "failed"

            retry = await client.post(
                f"/api/v1/projects/{project_id}/initialization/retry",
                headers=bearer(live_admin_token),
            )
            resumed = await wait_for_run(client, live_admin_token, retry.json()["id"])
            assert resumed["status"] == "succeeded"
            assert [s["status"] for s in resumed["steps"][:3]] == ["skipped"] * 3
            project = await get_project(client, live_admin_token, project_id)
    finally:
        stop(doomed)
        if survivor is not None:
            stop(survivor)

    assert project["status"] == "active"
    prefix = f"crash_me_{project_id.replace('-', '')[:8]}_%"
    count = "SELECT count(*) FROM {} WHERE {} LIKE '" + prefix + "'"
    assert postgres.psql("postgres", count.format("pg_database", "datname")).strip() == "2"
    assert postgres.psql("postgres", count.format("pg_roles", "rolname")).strip() == "2"
    commits = subprocess.run(
        ["git", "--git-dir", project["repository_url"].removeprefix("file://"), "rev-list",
         "--count", "main"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert commits == "1"


async def test_deploy_token_of_one_project_is_refused_on_another(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    mine = await create_project(live, live_admin_token, "token-home")
    theirs = await create_project(live, live_admin_token, "token-away")
    token = (await wait_for_run(live, live_admin_token, mine["run"]["id"]))["result"][
        "deploy_token"
    ]
    other, other_run = theirs["project"]["id"], theirs["run"]["id"]
    await wait_for_run(live, live_admin_token, other_run)

    attempts = [
        ("GET", f"/api/v1/projects/{other}"),
        ("GET", f"/api/v1/projects/{other}/runs"),
        ("GET", f"/api/v1/runs/{other_run}"),
        ("GET", f"/api/v1/runs/{other_run}/events"),
        ("POST", f"/api/v1/runs/{other_run}/cancel"),
        ("POST", f"/api/v1/projects/{other}/initialization/retry"),
        ("DELETE", f"/api/v1/projects/{other}"),
        ("POST", "/api/v1/projects"),
        ("GET", "/api/v1/keys"),
    ]
    for method, path in attempts:
        body = {"slug": "by-token", "name": "x", "template": "fastapi-service"}
        response = await live.request(
            method, path, headers=bearer(token), json=body if path.endswith("/projects") else None
        )
        assert response.status_code == 403, (method, path, response.text)
    own = await live.get(f"/api/v1/runs/{mine['run']['id']}", headers=bearer(token))
    assert own.status_code == 200


async def test_ten_projects_at_once_all_become_active(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    # Ten shows the concurrency (the worker takes them all at once); bench/init_throughput.py
    # times twenty.
    created = await asyncio.gather(
        *(create_project(live, live_admin_token, f"crowd-{i}") for i in range(10))
    )
    runs = await asyncio.gather(
        *(wait_for_run(live, live_admin_token, c["run"]["id"], timeout=180) for c in created)
    )
    assert [r["status"] for r in runs] == ["succeeded"] * 10, [r["error"] for r in runs]
    projects = await asyncio.gather(
        *(get_project(live, live_admin_token, c["project"]["id"]) for c in created)
    )
    assert {p["status"] for p in projects} == {"active"}


async def test_same_slug_twice_at_once_gives_one_202_and_one_409(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    body = {"slug": "only-once", "name": "Once", "template": "fastapi-service"}
    responses = await asyncio.gather(
        *(
            live.post("/api/v1/projects", json=body, headers=bearer(live_admin_token))
            for _ in range(2)
        )
    )
    assert sorted(r.status_code for r in responses) == [202, 409]
    conflict = next(r for r in responses if r.status_code == 409)
    assert conflict.headers["content-type"] == "application/problem+json"


async def test_a_second_execution_of_a_finished_run_changes_nothing(
    live: httpx.AsyncClient, live_admin_token: str, redis_server: EmbeddedRedis
) -> None:
    created = await create_project(live, live_admin_token, "run-twice")
    run = await wait_for_run(live, live_admin_token, created["run"]["id"])
    client = connect(redis_server.url)
    try:
        before = await stream.replay(client, run["id"], stream.START)
        # What arq does after a crash or a timeout: the same job delivered again.
        job_id = await enqueue(client, "execute_run", run["id"], job_id=f"again:{run['id']}")
        assert job_id is not None
        await result(client, job_id, timeout=30)
        after = await stream.replay(client, run["id"], stream.START)
    finally:
        await close(client)
    again = (await live.get(f"/api/v1/runs/{run['id']}", headers=bearer(live_admin_token))).json()
    assert [(s["name"], s["status"], s["finished_at"]) for s in again["steps"]] == [
        (s["name"], s["status"], s["finished_at"]) for s in run["steps"]
    ]
    assert [e.id for e in after] == [e.id for e in before]
    project = await get_project(live, live_admin_token, created["project"]["id"])
    commits = subprocess.run(
        ["git", "--git-dir", project["repository_url"].removeprefix("file://"), "rev-list",
         "--count", "main"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert commits == "1"
