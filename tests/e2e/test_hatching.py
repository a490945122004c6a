"""Hatching projects end to end: real api and worker processes, driven over HTTP."""

import asyncio
import json
import subprocess
from pathlib import Path

import httpx

from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer
from tests.e2e.helpers import create_project, get_project, wait_for_run
from tests.sse import follow

STEPS = [
    "create_repository",
    "render_template",
    "dependencies",
    "provision_databases",
    "apply_baseline",
    "issue_deploy_token",
    "finalize",
]


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_project_hatches_and_streams_every_step_until_end(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    created = await create_project(live, live_admin_token, "hatch-one")
    project, run = created["project"], created["run"]
    assert project["status"] == "pending" and run["kind"] == "initialize"
    assert [s["name"] for s in run["steps"]] == STEPS

    frames = await follow(live, run["id"], live_admin_token)

    assert frames[0].event == "snapshot" and frames[0].retry is not None
    assert frames[-1].event == "end" and frames[-1].data["status"] == "succeeded"
    assert frames[-2].event == "run.succeeded"
    started = [f.data["step"] for f in frames if f.event == "step.started"]
    succeeded = [f.data["step"] for f in frames if f.event == "step.succeeded"]
    assert started == STEPS and succeeded == STEPS
    assert any(f.event == "step.progress" for f in frames)
    assert all(f.id for f in frames)

    hatched = await get_project(live, live_admin_token, project["id"])
    assert hatched["status"] == "active"
    assert [(e["name"], e["revision"]) for e in hatched["environments"]] == [
        ("staging", "0001"),
        ("production", "0001"),
    ]
    summary = hatched["initialization_summary"]
    assert summary["failed_step"] is None
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "succeeded" for s in summary["steps"])
    assert summary["total_duration_ms"] > 0

    for environment in ("staging", "production"):
        database = f"hatch_one_{project['id'].replace('-', '')[:8]}_{environment}"
        assert postgres.psql(database, "SELECT to_regclass('public.item')").strip() == "item"
        owner = postgres.psql(
            "postgres",
            f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{database}'",
        )
        assert owner.strip() == database

    clone = tmp_path / "clone"
    _git("clone", "--quiet", hatched["repository_url"], str(clone))
    assert (clone / "alembic.ini").exists()
    assert (clone / "alembic/versions/0001_create_item.py").exists()
    assert "# Hatch-One" in (clone / "README.md").read_text()
    assert _git("rev-list", "--count", "HEAD", cwd=clone) == "1"


async def test_deploy_token_is_shown_once_and_works_for_its_project(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    created = await create_project(live, live_admin_token, "token-once")
    run = await wait_for_run(live, live_admin_token, created["run"]["id"])
    assert run["status"] == "succeeded"
    token = run["result"]["deploy_token"]
    assert token.startswith("hat_" + run["result"]["deploy_token_prefix"])

    again = (await live.get(f"/api/v1/runs/{run['id']}", headers=bearer(live_admin_token))).json()
    assert "deploy_token" not in again["result"]
    assert again["result"]["deploy_token_prefix"] == run["result"]["deploy_token_prefix"]

    as_ci = await live.get(f"/api/v1/runs/{run['id']}", headers=bearer(token))
    assert as_ci.status_code == 200


async def test_curl_follows_a_project_to_the_end(
    live: httpx.AsyncClient, live_api: str, live_admin_token: str
) -> None:
    created = await create_project(live, live_admin_token, "curl-follow")
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", "90",
        "-H", f"Authorization: Bearer {live_admin_token}",
        f"{live_api}{created['run']['events_url']}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output = (await curl.communicate())[0].decode()
    assert curl.returncode == 0
    assert output.startswith("retry: ")
    assert "event: snapshot" in output and "event: run.succeeded" in output
    assert output.rstrip().splitlines()[-2] == "event: end"


async def test_unknown_template_is_422_and_creates_nothing(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    response = await live.post(
        "/api/v1/projects",
        json={"slug": "no-template", "name": "x", "template": "nope"},
        headers=bearer(live_admin_token),
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.template"
    listed = await live.get("/api/v1/projects", headers=bearer(live_admin_token))
    assert "no-template" not in [p["slug"] for p in listed.json()["items"]]


async def test_the_request_id_reaches_the_worker_log_lines_of_the_run_it_started(
    live: httpx.AsyncClient, live_admin_token: str, scratch_dir: Path
) -> None:
    response = await live.post(
        "/api/v1/projects",
        json={"slug": "traced", "name": "Traced", "template": "fastapi-service"},
        headers={**bearer(live_admin_token), "X-Request-ID": "trace-hatch-42"},
    )
    assert response.status_code == 202
    run = response.json()["run"]
    assert run["request_id"] == "trace-hatch-42"
    assert (await wait_for_run(live, live_admin_token, run["id"]))["status"] == "succeeded"

    logged = [
        json.loads(line)
        for line in (scratch_dir / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    of_run = [entry for entry in logged if entry.get("run_id") == run["id"]]
    events = [entry["event"] for entry in of_run]
    assert events[0] == "run_started" and events[-1] == "run_succeeded", events
    assert events.count("step_succeeded") == len(STEPS)
    assert all(entry.get("request_id") == "trace-hatch-42" for entry in of_run), of_run
