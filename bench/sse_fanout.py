"""SSE fan-out: delivery latency of run events to many clients of one api process.

The worker side publishes 500 events at 50 events/s on a run (with `hatchery.events`,
exactly as the worker does) to 10 and to 1,000 SSE clients of one real `hatchery api`
process, and once with the 1,000 clients spread over 100 runs (each run at 50 events/s).
Latency is from publish to the client reading the frame. Beside it, raw Redis pub/sub
latency (one subscriber) measured in the same run.

    .venv/bin/python bench/sse_fanout.py [--events 500] [--rate 50]
"""

import argparse
import asyncio
import json
import resource
import statistics
import time
import uuid

import psutil
import uvloop
from redis.asyncio import Redis

from bench.common import Stack, percentile, stack, start_api, stop
from hatchery import db
from hatchery.events import stream
from hatchery.projects.models import Project
from hatchery.runs.models import Run, RunKind, RunStatus


class Client(asyncio.Protocol):
    """One SSE connection, parsed in the transport's callback: a thousand of them in one
    process must cost little, or the client side would be what the benchmark measures."""

    def __init__(self, port: int, token: str, run_id: str) -> None:
        self.port, self.token, self.run_id = port, token, run_id
        self.latencies: list[float] = []
        self.seqs: set[int] = set()
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.buffer = b""
        self.head = True

    async def follow(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: self, "127.0.0.1", self.port)
        transport.write(
            f"GET /api/v1/runs/{self.run_id}/events HTTP/1.0\r\nHost: bench\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await self.done.wait()
        transport.close()

    def data_received(self, data: bytes) -> None:
        received = time.time()
        self.buffer += data
        if self.head:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            assert b" 200 " in head.split(b"\r\n")[0], head
            self.head = False
        *frames, self.buffer = self.buffer.split(b"\n\n")
        for frame in frames:
            if b"event: step.progress" in frame:
                data_ = json.loads(frame[frame.index(b"data: ") + 6 :])
                self.latencies.append((received - data_["ts"]) * 1000)
                self.seqs.add(data_["seq"])
            elif b"event: snapshot" in frame:
                self.ready.set()
            elif b"event: end" in frame:
                self.done.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set()


async def make_runs(stack_: Stack, count: int) -> list[str]:
    engine = db.create_engine(stack_.settings.require_database_url())
    async with db.create_sessionmaker(engine)() as session, db.transaction(session):
        project = Project(
            slug=f"bench-{uuid.uuid4().hex[:6]}", name="bench", template="fastapi-service",
            repository_url="file:///dev/null", repository_path="/dev/null",
        )  # fmt: skip
        session.add(project)
        await session.flush()
        runs = [
            Run(project_id=project.id, kind=RunKind.initialize, status=RunStatus.running)
            for _ in range(count)
        ]
        session.add_all(runs)
    ids = [str(r.id) for r in runs]
    await engine.dispose()
    return ids


async def publish_all(redis: Redis, run_ids: list[str], events: int, rate: float) -> None:
    interval = 1 / rate
    start = time.monotonic()
    for seq in range(events):
        await asyncio.gather(
            *(
                stream.publish(redis, run_id, "step.progress", "bench", percent=seq, seq=seq)
                for run_id in run_ids
            )
        )
        await asyncio.sleep(max(0, start + (seq + 1) * interval - time.monotonic()))
    for run_id in run_ids:
        await stream.publish(redis, run_id, "run.succeeded", status="succeeded")


async def scenario(
    stack_: Stack, port: int, api_pid: int, clients: int, runs: int, events: int, rate: float
) -> dict[str, float]:
    run_ids = await make_runs(stack_, runs)
    followers = [Client(port, stack_.admin_token, run_ids[i % runs]) for i in range(clients)]
    tasks = [asyncio.create_task(c.follow()) for c in followers]
    await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in followers)), 120)
    redis = Redis.from_url(stack_.redis.url)
    rss = 0.0

    async def sample_rss() -> None:
        nonlocal rss
        while True:
            rss = max(rss, psutil.Process(api_pid).memory_info().rss / 2**20)
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    await publish_all(redis, run_ids, events, rate)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    sampler.cancel()
    await redis.aclose()
    latencies = [value for c in followers for value in c.latencies]
    lost = sum(events - len(c.seqs) for c in followers)
    return {
        "deliveries": len(latencies),
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "lost": lost,
        "rss_mib": rss,
    }


async def raw_pubsub(redis_url: str, events: int, rate: float) -> dict[str, float]:
    publisher, subscriber = Redis.from_url(redis_url), Redis.from_url(redis_url)
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("bench:raw")
    latencies: list[float] = []

    async def receive() -> None:
        while len(latencies) < events:
            message = await pubsub.get_message(timeout=5)
            if message is not None:
                latencies.append((time.time() - json.loads(message["data"])["ts"]) * 1000)

    receiver = asyncio.create_task(receive())
    start = time.monotonic()
    for seq in range(events):
        await publisher.publish("bench:raw", json.dumps({"ts": time.time(), "seq": seq}))
        await asyncio.sleep(max(0, start + (seq + 1) / rate - time.monotonic()))
    await asyncio.wait_for(receiver, 30)
    await pubsub.aclose()
    await publisher.aclose()
    await subscriber.aclose()
    return {
        "deliveries": len(latencies),
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "lost": events - len(latencies),
        "rss_mib": 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (10_000, 10_000))

    rows: dict[str, dict[str, float]] = {}
    with stack() as stack_:
        api, port = start_api(stack_.env)
        try:
            rows["raw redis pub/sub (1 sub)"] = uvloop.run(
                raw_pubsub(stack_.redis.url, args.events, args.rate)
            )
            for label, clients, runs in [
                ("sse 10 clients, 1 run", 10, 1),
                ("sse 1000 clients, 1 run", 1000, 1),
                ("sse 1000 clients, 100 runs", 1000, 100),
            ]:
                rows[label] = uvloop.run(
                    scenario(stack_, port, api.pid, clients, runs, args.events, args.rate)
                )
        finally:
            stop(api)

    print(f"{args.events} events at {args.rate:g}/s per run; latency in ms, publish to read")
    columns = ("deliveries", "p50", "p99", "max", "lost", "api RSS MiB")
    print(f"{'':30} {columns[0]:>10} " + " ".join(f"{c:>7}" for c in columns[1:4]), end="")
    print(f" {columns[4]:>5} {columns[5]:>11}")
    for label, row in rows.items():
        print(
            f"{label:30} {row['deliveries']:10.0f} {row['p50']:7.2f} {row['p99']:7.2f} "
            f"{row['max']:7.2f} {row['lost']:5.0f} {row['rss_mib']:11.1f}"
        )
    raw = rows["raw redis pub/sub (1 sub)"]
    for label, row in rows.items():
        if label.startswith("sse"):
            p50, p99 = row["p50"] / raw["p50"], row["p99"] / raw["p99"]
            print(f"ratio {label} / raw: p50 {p50:.1f}x  p99 {p99:.1f}x")
    ten, thousand = rows["sse 10 clients, 1 run"], rows["sse 1000 clients, 1 run"]
    lost = sum(r["lost"] for r in rows.values())
    print(
        f"targets: lost 0 ({'met' if lost == 0 else 'MISSED'}); p99 10 clients <= 3 ms "
        f"({'met' if ten['p99'] <= 3 else 'MISSED'}); p99 1000 clients <= 50 ms "
        f"({'met' if thousand['p99'] <= 50 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
