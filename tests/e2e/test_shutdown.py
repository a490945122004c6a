"""SIGTERM to the api and to a worker: streams are told to reconnect, a run cut short
goes back to the queue and another worker finishes it."""

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import bearer, start, start_api, stop
from tests.e2e.helpers import create_project, wait_for_run
from tests.sse import follow


async def test_sigterm_closes_event_streams_with_a_retry_hint_and_the_api_exits(
    isolated_env: dict[str, str], scratch_dir: Path, live_admin_token: str
) -> None:
    env = {**isolated_env, "HATCHERY_SHUTDOWN_GRACE_SECONDS": "10"}
    api, url = start_api(env, scratch_dir / "sigterm-api.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            created = await create_project(client, live_admin_token, "sigterm-api")
            lines: list[str] = []
            async with client.stream(
                "GET", f"/api/v1/runs/{created['run']['id']}/events",
                headers=bearer(live_admin_token),
            ) as response:  # fmt: skip
                stream = response.aiter_lines()
                while (line := await anext(stream)) != "":  # the snapshot, then wait
                    lines.append(line)
                api.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                lines += [line async for line in stream]  # ends cleanly, no error
                closed_after = time.monotonic() - signalled
        api.wait(timeout=15)
        exited_after = time.monotonic() - signalled
    finally:
        stop(api)

    assert "event: snapshot" in lines
    farewell = lines[lines.index("event: snapshot") :]
    assert "retry: 3000" in farewell[2:], lines  # after the snapshot: a fresh hint
    assert ": server shutting down, reconnect" in farewell
    assert closed_after < 3, closed_after
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert api.returncode in (0, -signal.SIGTERM) and exited_after < 10, exited_after
    assert "Application shutdown complete." in (scratch_dir / "sigterm-api.log").read_text()
    async with httpx.AsyncClient() as client:
        try:
            await client.get(f"{url}/healthz")
            raise AssertionError("still accepting after SIGTERM")
        except httpx.ConnectError:
            pass


async def test_sigterm_mid_step_hands_the_run_back_and_another_worker_finishes_it(
    isolated_env: dict[str, str], isolated_api: str, scratch_dir: Path, live_admin_token: str
) -> None:
    env = {**isolated_env, "HATCHERY_WORKER_SHUTDOWN_GRACE_SECONDS": "1"}
    stopping = start(["worker"], env, scratch_dir / "sigterm-worker.log")
    successor_log = scratch_dir / "successor-worker.log"
    successor = start(["worker"], isolated_env, successor_log)
    try:
        deadline = time.monotonic() + 30
        while "Starting worker" not in successor_log.read_text():
            assert time.monotonic() < deadline, "the successor never started"
            await asyncio.sleep(0.1)
        # Paused until the run has been handed back, and so that it is not the one to
        # take the run first.
        successor.send_signal(signal.SIGSTOP)
        async with httpx.AsyncClient(base_url=isolated_api, timeout=60) as client:
            created = await create_project(client, live_admin_token, "sigterm-me", "slow-baseline")
            run_id = created["run"]["id"]
            await follow(
                client, run_id, live_admin_token,
                until=lambda f: f.event == "step.started" and f.data["step"] == "apply_baseline",
            )  # fmt: skip
            stopping.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            stopping.wait(timeout=15)
            assert stopping.returncode == 0
            assert time.monotonic() - signalled < 6  # the 1 s grace, then a clean exit
            handed_back = (
                await client.get(f"/api/v1/runs/{run_id}", headers=bearer(live_admin_token))
            ).json()
            successor.send_signal(signal.SIGCONT)
            assert handed_back["status"] == "queued"
            statuses = {s["name"]: s["status"] for s in handed_back["steps"]}
            assert statuses["apply_baseline"] == "pending"
            assert statuses["provision_databases"] == "succeeded"  # done once, kept

            finished = await wait_for_run(client, live_admin_token, run_id, timeout=60)
            assert finished["status"] == "succeeded", finished
            frames = await follow(client, run_id, live_admin_token)
    finally:
        successor.send_signal(signal.SIGCONT)
        stop(stopping)
        stop(successor)

    events = [(f.event, f.data.get("step"), f.data.get("message")) for f in frames[1:]]
    handed = next(i for i, (_, _, m) in enumerate(events) if m and "worker stopping" in m)
    assert events[handed][2] == "worker stopping: apply_baseline will run again", events
    before = [step for event, step, _ in events[:handed] if event == "step.started"]
    assert before[-1] == "apply_baseline", events
    again = [step for event, step, _ in events[handed:] if event == "step.started"]
    assert again == ["apply_baseline", "issue_deploy_token", "finalize"], events
