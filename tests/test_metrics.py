"""Prometheus metrics of real api and worker processes."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hatchery.embedded import free_port, wait_for_port
from tests.conftest import bearer, start, start_api, stop
from tests.e2e.helpers import WorkingCopy, create_project, deploy, get_project, wait_for_run
from tests.sse import frames


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metrics_api(isolated_env: dict[str, str], scratch_dir: Path) -> Iterator[str]:
    process, url = start_api(isolated_env, scratch_dir / "metrics-api.log")
    yield url
    stop(process)


async def test_api_and_worker_metrics_count_requests_runs_steps_streams_and_backups(
    metrics_api: str,
    isolated_env: dict[str, str],
    live_admin_token: str,
    scratch_dir: Path,
    tmp_path: Path,
) -> None:
    async with httpx.AsyncClient(base_url=metrics_api, timeout=60) as api:
        assert (await api.get("/metrics")).status_code == 200  # public, like /healthz
        created = await create_project(api, live_admin_token, "metered")
        scraped = (await api.get("/metrics")).text
        assert value(scraped, "hatchery_queue_depth") == 1.0  # no worker yet
        labels = {"method": "POST", "route": "/api/v1/projects"}
        assert value(scraped, "hatchery_http_requests_total", **labels, status="202") == 1.0
        assert value(scraped, "hatchery_http_request_duration_seconds_count", **labels) == 1.0
        assert not any("metered" in name or created["project"]["id"] in str(key)
                       for name, key in samples(scraped))  # fmt: skip

        events = f"/api/v1/runs/{created['run']['id']}/events"
        async with api.stream("GET", events, headers=bearer(live_admin_token)) as stream:
            reader = frames(stream)  # held: a dropped reader closes the connection
            assert (await anext(reader)).event == "snapshot"
            assert value((await api.get("/metrics")).text, "hatchery_sse_connections") == 1.0
            await reader.aclose()
        deadline = time.monotonic() + 5
        while value((await api.get("/metrics")).text, "hatchery_sse_connections") != 0.0:
            assert time.monotonic() < deadline, "the closed stream is still counted"
            await asyncio.sleep(0.05)

        port = free_port()
        env = {**isolated_env, "HATCHERY_WORKER_METRICS_PORT": str(port)}
        worker = start(["worker"], env, scratch_dir / "metrics-worker.log")
        try:
            wait_for_port(port, 30, worker)
            run = await wait_for_run(api, live_admin_token, created["run"]["id"])
            assert run["status"] == "succeeded"
            project = await get_project(api, live_admin_token, created["project"]["id"])
            repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
            commit = repo.add_revision("0002", "0001", ["CREATE TABLE gadget (id int)"])
            deployed = await deploy(
                api, live_admin_token, project["id"], "staging", commit, "metrics-1"
            )
            upgrade = await wait_for_run(api, live_admin_token, deployed.json()["id"])
            assert upgrade["status"] == "succeeded"

            async with httpx.AsyncClient() as client:
                worker_text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        finally:
            stop(worker)

    for kind in ("initialize", "upgrade"):
        assert value(worker_text, "hatchery_runs_total", kind=kind, status="succeeded") == 1.0
        assert (
            value(worker_text, "hatchery_run_duration_seconds_count", kind=kind, status="succeeded")
            == 1.0
        )
    step = {"kind": "initialize", "step": "render_template", "status": "succeeded"}
    assert value(worker_text, "hatchery_step_duration_seconds_count", **step) == 1.0
    assert value(worker_text, "hatchery_job_pickup_seconds_count") >= 2.0
    assert value(worker_text, "hatchery_backup_size_bytes_count") == 1.0
    assert value(worker_text, "hatchery_backup_size_bytes_sum") > 0
    assert value(worker_text, "hatchery_backup_duration_seconds_count") == 1.0
