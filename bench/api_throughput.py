"""API throughput: requests per second and latency of `GET /api/v1/projects/{id}` with 50
concurrent keep-alive clients on one api process, beside a bare FastAPI route answering
the same JSON from memory under the same uvicorn, in the same run.

    .venv/bin/python -m bench.api_throughput [--clients 50] [--seconds 10]
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid

import httpx

from bench.common import Client, percentile, stack, start_api, stop
from hatchery.embedded import free_port, wait_for_port


async def load(port: int, path: str, token: str, clients: int, seconds: float) -> list[float]:
    """Latencies (ms) of every request answered while `clients` keep asking."""
    latencies: list[float] = []

    async def one_client() -> None:
        async with Client(port, token) as client:
            deadline = time.perf_counter() + seconds
            while (started := time.perf_counter()) < deadline:
                status, _, _ = await client.get(path)
                assert status == 200, status
                latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


def measure(port: int, path: str, token: str, clients: int, seconds: float) -> dict[str, float]:
    asyncio.run(load(port, path, token, clients, 2))  # warm up: connections, caches
    latencies = asyncio.run(load(port, path, token, clients, seconds))
    return {
        "rps": len(latencies) / seconds,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with stack() as stack_:
        api, port = start_api(stack_.env)
        bare = None
        try:
            created = httpx.post(
                f"http://127.0.0.1:{port}/api/v1/projects",
                json={"slug": "bench", "name": "Bench", "template": "fastapi-service"},
                headers={"Authorization": f"Bearer {stack_.admin_token}"},
            ).json()
            path = f"/api/v1/projects/{created['project']['id']}"
            body = httpx.get(
                f"http://127.0.0.1:{port}{path}",
                headers={"Authorization": f"Bearer {stack_.admin_token}"},
            ).content
            project_json = stack_.scratch / "project.json"
            project_json.write_bytes(body)
            bare_port = free_port()
            bare = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(bare_port),
                 "--log-level", "warning", "--no-access-log"],
                env={**stack_.env, "BENCH_PROJECT_JSON": str(project_json)},
            )  # fmt: skip
            wait_for_port(bare_port, 30, bare)
            bare_path = f"/api/v1/projects/{uuid.uuid4()}"
            assert json.loads(httpx.get(f"http://127.0.0.1:{bare_port}{bare_path}").content) == (
                json.loads(body)
            )
            hatchery = measure(port, path, stack_.admin_token, args.clients, args.seconds)
            anchor = measure(bare_port, bare_path, "", args.clients, args.seconds)
        finally:
            stop(api)
            if bare is not None:
                stop(bare)

    print(
        f"GET /api/v1/projects/{{id}}, {args.clients} keep-alive clients, "
        f"{args.seconds:g} s, {len(body)} bytes of JSON"
    )
    for label, figures in (("hatchery api", hatchery), ("bare FastAPI route", anchor)):
        print(
            f"  {label:20} {figures['rps']:8.0f} req/s   "
            f"p50 {figures['p50']:6.2f} ms   p99 {figures['p99']:6.2f} ms"
        )
    print(
        f"ratio hatchery / bare: throughput {hatchery['rps'] / anchor['rps']:.2f}, "
        f"p99 {hatchery['p99'] / anchor['p99']:.2f}"
    )


if __name__ == "__main__":
    main()
