import asyncio
import subprocess
import time

import httpx

from hatchery.embedded import EmbeddedRedis


async def _wait_for_readiness(
    client: httpx.AsyncClient, status: int, timeout: float
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def test_liveness_needs_no_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_database_migrations_redis_and_worker_are_up(
    client: httpx.AsyncClient, worker_process: subprocess.Popen[bytes]
) -> None:
    response = await _wait_for_readiness(client, 200, timeout=30)
    assert response.status_code == 200, response.json()
    assert response.json()["ready"] is True
    assert set(response.json()["checks"]) == {"database", "migrations", "redis", "worker"}


async def test_readiness_follows_redis_down_and_back_without_restart(
    client: httpx.AsyncClient,
    worker_process: subprocess.Popen[bytes],
    redis_server: EmbeddedRedis,
) -> None:
    assert (await _wait_for_readiness(client, 200, timeout=30)).status_code == 200

    redis_server.stop()
    try:
        down = await _wait_for_readiness(client, 503, timeout=10)
        assert down.status_code == 503
        checks = down.json()["checks"]
        assert checks["redis"]["ok"] is False
        assert checks["database"]["ok"] is True
    finally:
        redis_server.start()

    back = await _wait_for_readiness(client, 200, timeout=30)
    assert back.status_code == 200, back.json()
    assert worker_process.poll() is None, "the worker should outlive a Redis outage"
