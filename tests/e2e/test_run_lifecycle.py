"""Runs across refreshes, failures, retries, cancellation and deletion."""

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis
from hatchery.events import stream
from hatchery.queue import close, connect
from tests.conftest import bearer, start_api, stop
from tests.e2e.helpers import create_project, get_project, wait_for_run
from tests.sse import Frame, follow


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def _started(step: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.event == "step.started" and frame.data["step"] == step


async def _logged(redis_server: EmbeddedRedis, run_id: str) -> list[tuple[str, str]]:
    client = connect(redis_server.url)
    try:
        return [(e.id, e.type) for e in await stream.replay(client, run_id, stream.START)]
    finally:
        await close(client)


async def test_reconnecting_with_last_event_id_misses_nothing_and_repeats_nothing(
    live: httpx.AsyncClient, live_admin_token: str, redis_server: EmbeddedRedis
) -> None:
    created = await create_project(live, live_admin_token, "refresh-me", "slow-baseline")
    run_id = created["run"]["id"]

    first = await follow(live, run_id, live_admin_token, stop_after=4)
    assert first[-1].event != "end", "the run should still be going"
    resumed = await follow(live, run_id, live_admin_token, last_event_id=first[-1].id)

    assert resumed[0].event == "snapshot" and resumed[0].id == first[-1].id
    assert resumed[-1].event == "end" and resumed[-1].data["status"] == "succeeded"
    seen = [(f.id, f.event) for f in first[1:] + resumed[1:-1]]
    assert seen == await _logged(redis_server, run_id)


async def test_unknown_event_id_gets_reset_and_a_fresh_snapshot(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    created = await create_project(live, live_admin_token, "reset-me")
    frames = await follow(live, created["run"]["id"], live_admin_token, last_event_id="12345-0")
    assert [f.event for f in frames[:2]] == ["reset", "snapshot"]
    assert frames[-1].event == "end"
    first_step = next(f.data["step"] for f in frames if f.event == "step.started")
    assert first_step == "create_repository"


async def test_failed_baseline_is_recorded_and_retry_resumes_at_the_failed_step(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    created = await create_project(live, live_admin_token, "fix-me", "broken-baseline")
    project_id = created["project"]["id"]
    run = await wait_for_run(live, live_admin_token, created["run"]["id"])

    assert run["status"] == "failed" and run["error_code"] == "step_failed"
    failed = next(s for s in run["steps"] if s["status"] == "failed")
    assert failed["name"] == "apply_baseline" and "missing_table" in failed["error"]
    project = await get_project(live, live_admin_token, project_id)
    assert project["status"] == "failed"
    assert "missing_table" in project["initialization_error"]
    assert project["initialization_summary"]["failed_step"] == "apply_baseline"
    database = f"fix_me_{project_id.replace('-', '')[:8]}_staging"
    # All or nothing: the table the revision created before failing is not there.
    assert postgres.psql(database, "SELECT to_regclass('public.item')").strip() == ""

    clone = tmp_path / "clone"
    _git("clone", "--quiet", project["repository_url"], str(clone))
    revision = clone / "alembic/versions/0001_broken.py"
    revision.write_text(
        revision.read_text().replace("INSERT INTO missing_table VALUES (1)", "SELECT 1")
    )
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "fix baseline", cwd=clone)
    _git("push", "--quiet", "origin", "main", cwd=clone)

    retry_headers = {**bearer(live_admin_token), "Idempotency-Key": f"retry-{project_id}"}
    retry_url = f"/api/v1/projects/{project_id}/initialization/retry"
    retry = await live.post(retry_url, headers=retry_headers)
    assert retry.status_code == 202
    repeated = await live.post(retry_url, headers=retry_headers)
    assert repeated.status_code == 200 and repeated.json()["id"] == retry.json()["id"]
    assert retry.json()["trigger"] == "retry" and retry.json()["attempt"] == 2
    second = await wait_for_run(live, live_admin_token, retry.json()["id"])

    assert second["status"] == "succeeded"
    statuses = {s["name"]: s["status"] for s in second["steps"]}
    assert statuses == {
        "create_repository": "skipped",
        "render_template": "skipped",
        "dependencies": "skipped",
        "provision_databases": "skipped",
        "apply_baseline": "succeeded",
        "issue_deploy_token": "succeeded",
        "finalize": "succeeded",
    }
    assert (await get_project(live, live_admin_token, project_id))["status"] == "active"
    assert _git("ls-remote", project["repository_url"]).count("refs/heads/main") == 1
    _git("fetch", "--quiet", cwd=clone)
    assert _git("rev-list", "--count", "origin/main", cwd=clone) == "2"


async def test_retry_of_a_healthy_project_is_409(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    created = await create_project(live, live_admin_token, "no-retry")
    await wait_for_run(live, live_admin_token, created["run"]["id"])
    response = await live.post(
        f"/api/v1/projects/{created['project']['id']}/initialization/retry",
        headers=bearer(live_admin_token),
    )
    assert response.status_code == 409


async def test_cancel_stops_a_run_between_steps(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    created = await create_project(live, live_admin_token, "cancel-me", "slow-baseline")
    run_id = created["run"]["id"]
    await follow(live, run_id, live_admin_token, until=_started("apply_baseline"))
    response = await live.post(f"/api/v1/runs/{run_id}/cancel", headers=bearer(live_admin_token))
    assert response.status_code == 202
    run = await wait_for_run(live, live_admin_token, run_id)
    assert run["status"] == "cancelled"
    assert run["steps"][-1]["status"] == "pending"
    again = await live.post(f"/api/v1/runs/{run_id}/cancel", headers=bearer(live_admin_token))
    assert again.status_code == 409


async def test_delete_drops_databases_roles_repository_and_keys(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres
) -> None:
    created = await create_project(live, live_admin_token, "delete-me")
    project_id = created["project"]["id"]
    init = await wait_for_run(live, live_admin_token, created["run"]["id"])
    deploy_token = init["result"]["deploy_token"]
    project = await get_project(live, live_admin_token, project_id)
    repository = Path(project["repository_url"].removeprefix("file://"))
    assert repository.exists()
    # Used once, so the api process remembers the key and the environment's database.
    run_url = f"/api/v1/runs/{init['id']}"
    assert (await live.get(run_url, headers=bearer(deploy_token))).status_code == 200
    schema_url = f"/api/v1/projects/{project_id}/environments/staging/schema"
    assert (await live.get(schema_url, headers=bearer(live_admin_token))).status_code == 200

    response = await live.delete(f"/api/v1/projects/{project_id}", headers=bearer(live_admin_token))
    assert response.status_code == 202 and response.json()["kind"] == "delete"
    frames = await follow(live, response.json()["id"], live_admin_token)
    assert frames[-1].data["status"] == "succeeded"

    name = f"delete_me_{project_id.replace('-', '')[:8]}_%"
    assert (
        postgres.psql(
            "postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{name}'"
        ).strip()
        == "0"
    )
    assert (
        postgres.psql(
            "postgres", f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{name}'"
        ).strip()
        == "0"
    )
    assert not repository.exists()
    assert (await get_project(live, live_admin_token, project_id))["status"] == "deleted"
    refused = await live.get(run_url, headers=bearer(deploy_token))
    assert refused.status_code == 401
    assert (await live.get(schema_url, headers=bearer(live_admin_token))).status_code == 404

    again = await live.delete(f"/api/v1/projects/{project_id}", headers=bearer(live_admin_token))
    assert again.status_code == 200 and again.json()["id"] == response.json()["id"]
    reused = await create_project(live, live_admin_token, "delete-me")
    assert reused["project"]["id"] != project_id


@pytest.fixture
def quick_ping_api(service_env: dict[str, str], scratch_dir: Path) -> Iterator[str]:
    env = {**service_env, "HATCHERY_SSE_PING_SECONDS": "0.3"}
    process, url = start_api(env, scratch_dir / "ping-api.log")
    yield url
    stop(process)


async def test_idle_stream_gets_heartbeat_comments(
    quick_ping_api: str, live_admin_token: str
) -> None:
    async with httpx.AsyncClient(base_url=quick_ping_api, timeout=60) as client:
        created = await create_project(client, live_admin_token, "heartbeat", "slow-baseline")
        url = f"/api/v1/runs/{created['run']['id']}/events"
        comments = 0
        async with client.stream("GET", url, headers=bearer(live_admin_token)) as response:
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["cache-control"] == "no-store"
            async for line in response.aiter_lines():
                comments += line.startswith(":")
                if line == "event: end":
                    break
    assert comments >= 3


async def test_open_streams_hold_no_database_connection(
    quick_ping_api: str, live_admin_token: str
) -> None:
    # Far more streams than the api's pool has connections (10 + 10 overflow).
    async with httpx.AsyncClient(base_url=quick_ping_api, timeout=60) as client:
        created = await create_project(client, live_admin_token, "many-eyes", "slow-baseline")
        run_id = created["run"]["id"]
        watchers = [
            asyncio.create_task(follow(client, run_id, live_admin_token)) for _ in range(40)
        ]
        await asyncio.sleep(1)
        started = time.monotonic()
        listed = await client.get("/api/v1/projects", headers=bearer(live_admin_token))
        assert listed.status_code == 200
        assert time.monotonic() - started < 2
        assert not any(w.done() for w in watchers), "the run should still be streaming"
        ends = await asyncio.gather(*watchers)
    assert all(frames[-1].event == "end" for frames in ends)
