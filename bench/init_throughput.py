"""Initialization throughput: time from POST /projects to `active`.

One real api and one real worker on embedded PostgreSQL and Redis; first one project,
then 20 created at once. Beside the wall time, the anchor measured in the same run: the
time the steps themselves report (their summed durations), so the ratio is what the
queue, the events and the bookkeeping add.

    .venv/bin/python -m bench.init_throughput [--crowd 20]
"""

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.common import percentile, stack, start, start_api, stop


async def hatch(client: httpx.AsyncClient, slug: str) -> tuple[float, float]:
    started = time.monotonic()
    created = (
        await client.post(
            "/api/v1/projects", json={"slug": slug, "name": slug, "template": "fastapi-service"}
        )
    ).json()
    run_id = created["run"]["id"]
    while True:
        run: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in {"succeeded", "failed", "cancelled"}:
            break
        await asyncio.sleep(0.02)
    assert run["status"] == "succeeded", run
    wall = time.monotonic() - started
    work = sum(s["duration_ms"] or 0 for s in run["steps"]) / 1000
    return wall, work


async def measure(port: int, token: str, crowd: int) -> dict[str, list[tuple[float, float]]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300
    ) as client:
        await hatch(client, "warm-up")
        single = [await hatch(client, f"one-{i}") for i in range(3)]
        started = time.monotonic()
        tag = uuid.uuid4().hex[:4]
        many = await asyncio.gather(*(hatch(client, f"crowd-{tag}-{i}") for i in range(crowd)))
        many_wall = time.monotonic() - started
    return {"single": single, "crowd": many, "crowd_wall": [(many_wall, 0.0)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crowd", type=int, default=20)
    args = parser.parse_args()
    with stack() as stack_:
        worker = start(["worker"], stack_.env)
        api, port = start_api(stack_.env)
        try:
            results = asyncio.run(measure(port, stack_.admin_token, args.crowd))
        finally:
            stop(api)
            stop(worker)

    single_wall = statistics.median(w for w, _ in results["single"])
    single_work = statistics.median(s for _, s in results["single"])
    crowd_walls = [w for w, _ in results["crowd"]]
    crowd_work = sum(s for _, s in results["crowd"])
    ((all_done, _),) = results["crowd_wall"]
    print("POST -> active (seconds)")
    print(
        f"one project (median of 3):  wall {single_wall:.3f}  steps {single_work:.3f}  "
        f"ratio {single_wall / single_work:.2f}x"
    )
    p50, p95 = statistics.median(crowd_walls), percentile(crowd_walls, 95)
    print(
        f"{args.crowd} at once: all active after {all_done:.2f}  "
        f"per project p50 {p50:.2f} p95 {p95:.2f}"
    )
    print(
        f"{args.crowd} at once: throughput {args.crowd / all_done:.2f} projects/s; summed step "
        f"time {crowd_work:.2f} s ({crowd_work / all_done:.2f} steps at once on average)"
    )


if __name__ == "__main__":
    main()
