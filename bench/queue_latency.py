"""Enqueue-to-start latency of a job, Hatchery's worker settings beside arq's defaults.

Starts its own PostgreSQL and Redis, then a real `hatchery worker` process twice: once
with Hatchery's settings and once with arq's default poll delay (0.5 s). Each job is a
`ping` enqueued alone, at a random phase of the worker's poll cycle, and reports when it
started. Before the jobs, each worker is left idle and its CPU time (user and system,
psutil) over `--idle-seconds` is its idle cost, as a share of one core.

    .venv/bin/python bench/queue_latency.py [--jobs 300] [--idle-seconds 30]
"""

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from hatchery import queue
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis

ARQ_DEFAULT_POLL_DELAY = 0.5


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )


async def measure(redis_url: str, jobs: int, poll_delay: float) -> list[float]:
    client = queue.connect(redis_url)
    latencies = []
    try:
        for _ in range(jobs):
            # A random phase of the poll cycle, so that pickups are not in step with it.
            await asyncio.sleep(random.uniform(0, 2 * poll_delay))
            enqueued_at = time.time()
            job_id = await queue.enqueue(client, "ping", enqueued_at)
            assert job_id is not None
            result = await queue.result(client, job_id, timeout=30)
            latencies.append((result["started_at"] - enqueued_at) * 1000)
    finally:
        await queue.close(client)
    return latencies


def run_worker(env: dict[str, str], poll_delay: float) -> subprocess.Popen[bytes]:
    worker_env = {**env, "HATCHERY_WORKER_POLL_DELAY": str(poll_delay)}
    return subprocess.Popen(
        [sys.executable, "-m", "hatchery.cli", "worker"],
        env=worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def idle_share(pid: int, seconds: float) -> float:
    """The share of one core a process used over `seconds` (user and system time)."""
    process = psutil.Process(pid)
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return (after.user + after.system - before.user - before.system) / seconds


async def wait_for_worker(redis_url: str) -> None:
    client = queue.connect(redis_url)
    try:
        while not await queue.worker_alive(client):
            await asyncio.sleep(0.1)
    finally:
        await queue.close(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=30)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="hatchery-bench-"))
    scratch.chmod(0o755)
    postgres, redis = EmbeddedPostgres(scratch / "postgres"), EmbeddedRedis(scratch / "redis")
    postgres.start()
    redis.start()
    env = {
        **os.environ,
        "HATCHERY_DATABASE_URL": postgres.url(),
        "HATCHERY_REDIS_URL": redis.url,
        "HATCHERY_WORKER_HEARTBEAT_SECONDS": "1",
        "HATCHERY_LOG_LEVEL": "WARNING",
    }
    results, idle = {}, {}
    try:
        for label, poll_delay, jobs in [
            ("hatchery", Settings().worker_poll_delay, args.jobs),
            ("arq default", ARQ_DEFAULT_POLL_DELAY, max(args.jobs // 5, 20)),
        ]:
            worker = run_worker(env, poll_delay)
            try:
                asyncio.run(wait_for_worker(redis.url))
                time.sleep(3)  # past its start-up work (the reaper's first sweep)
                idle[label] = idle_share(worker.pid, args.idle_seconds)
                asyncio.run(measure(redis.url, 5, poll_delay))  # warm-up
                results[label] = asyncio.run(measure(redis.url, jobs, poll_delay))
            finally:
                worker.terminate()
                worker.wait(15)
    finally:
        redis.stop()
        postgres.stop()

    ours, anchor = results["hatchery"], results["arq default"]
    print(
        f"{'enqueue-to-start (ms)':24} {'jobs':>6} {'p50':>8} {'p99':>8} {'max':>8} {'idle CPU':>9}"
    )
    for label, values in results.items():
        print(
            f"{label:24} {len(values):6d} {statistics.median(values):8.2f} "
            f"{percentile(values, 99):8.2f} {max(values):8.2f} {idle[label]:8.2%}"
        )
    print(
        f"ratio hatchery/arq default: p50 {statistics.median(ours) / statistics.median(anchor):.3f}"
        f"  p99 {percentile(ours, 99) / percentile(anchor, 99):.3f}"
    )
    print(f"target p50 <= 25 ms: {'met' if statistics.median(ours) <= 25 else 'MISSED'}")
    print(
        f"target idle worker <= 1% of a core over {args.idle_seconds:g} s: "
        f"{'met' if idle['hatchery'] <= 0.01 else 'MISSED'} ({idle['hatchery']:.2%})"
    )


if __name__ == "__main__":
    main()
