import subprocess
import time

import pytest

from hatchery import queue
from hatchery.embedded import EmbeddedRedis


async def test_enqueued_job_runs_on_a_real_worker_process(
    redis_server: EmbeddedRedis, worker_process: subprocess.Popen[bytes]
) -> None:
    client = queue.connect(redis_server.url)
    try:
        enqueued_at = time.time()
        job_id = await queue.enqueue(client, "ping", enqueued_at)
        assert job_id is not None
        result = await queue.result(client, job_id, timeout=30)
    finally:
        await queue.close(client)
    assert result["enqueued_at"] == enqueued_at
    assert result["started_at"] >= enqueued_at


async def test_same_job_id_is_enqueued_once(redis_server: EmbeddedRedis) -> None:
    client = queue.connect(redis_server.url)
    try:
        first = await queue.enqueue(client, "ping", job_id="same-run")
        second = await queue.enqueue(client, "ping", job_id="same-run")
    finally:
        await queue.close(client)
    assert first == "same-run"
    assert second is None


async def test_a_job_that_raised_is_reported_as_failed_not_as_a_result(
    redis_server: EmbeddedRedis, worker_process: subprocess.Popen[bytes]
) -> None:
    client = queue.connect(redis_server.url)
    try:
        job_id = await queue.enqueue(client, "ping", 1.0, "an argument too many")
        assert job_id is not None
        with pytest.raises(queue.JobFailed, match="TypeError"):
            await queue.result(client, job_id, timeout=30)
    finally:
        await queue.close(client)
