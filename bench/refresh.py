"""Refresh: staging refreshed from a ~1 GiB production database through Hatchery, beside
`pg_dump -Fc` + `pg_restore` of the same database run directly.

One real api and worker. A hatched project's production database is filled (as its own
role) with `users` (unique emails, a sensitive password_hash) and a larger `events` table
referencing them; staging is refreshed from it with an email masking rule, timed from
the POST to the SSE `end`. In the same run the production database is dumped with a
plain `pg_dump -Fc` and restored with `pg_restore` into a new database, each timed as a
command (and restored once more with `--jobs=2`, as Hatchery restores). Printed: all
three, the ratios (target <= 1.5x of a plain dump + restore), every step, masking rows/s.

    .venv/bin/python -m bench.refresh [--users 1000000] [--events 5000000]
"""

import argparse
import asyncio
import subprocess
import tempfile
import time
from typing import Any

import httpx

from bench.common import Stack, stack, start, start_api, stop
from hatchery.pgtools import libpq_environment, pg_binary

FILL = """
SET ROLE {role};
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE,
  password_hash text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO users (email, password_hash)
  SELECT 'person' || g || '@customer.example.com', md5('pw' || g) || md5(g::text)
  FROM generate_series(1, {users}) g;
CREATE TABLE events (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id),
  kind text NOT NULL, payload text NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO events (user_id, kind, payload)
  SELECT 1 + g % {users}, 'kind' || g % 20, md5(g::text) || md5((g * 7)::text)
  FROM generate_series(1, {events}) g;
CREATE INDEX ix_events_user ON events (user_id);
VACUUM ANALYZE;
"""


async def hatch(client: httpx.AsyncClient) -> dict[str, Any]:
    created = (
        await client.post(
            "/api/v1/projects",
            json={"slug": "bench-refresh", "name": "b", "template": "fastapi-service"},
        )
    ).json()
    while True:
        run = (await client.get(f"/api/v1/runs/{created['run']['id']}")).json()
        if run["status"] in {"succeeded", "failed"}:
            break
        await asyncio.sleep(0.2)
    assert run["status"] == "succeeded", run
    project: dict[str, Any] = (
        await client.get(f"/api/v1/projects/{created['project']['id']}")
    ).json()
    return project


async def refresh_and_follow(
    client: httpx.AsyncClient, project_id: str
) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    response = await client.post(
        f"/api/v1/projects/{project_id}/environments/staging/refreshes",
        json={"from": "production"},
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    async with client.stream("GET", f"/api/v1/runs/{run_id}/events", timeout=3600) as events:
        async for line in events.aiter_lines():
            if line == "event: end":
                break
    wall = time.monotonic() - started
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert run["status"] == "succeeded", run
    return wall, run


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.monotonic() - started


async def measure(stack_: Stack, port: int, users: int, events: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {stack_.admin_token}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=600
    ) as client:
        project = await hatch(client)
        prefix = f"bench_refresh_{project['id'].replace('-', '')[:8]}"
        production = f"{prefix}_production"
        filled = time.monotonic()
        stack_.postgres.psql(production, FILL.format(role=production, users=users, events=events))
        fill_s = time.monotonic() - filled
        size = int(stack_.postgres.psql(production, "SELECT pg_database_size(current_database())"))
        rules = {"rules": [{"table": "public.users", "column": "email", "strategy": "email"}]}
        base = f"/api/v1/projects/{project['id']}/environments/staging"
        assert (await client.put(f"{base}/masking", json=rules)).status_code == 200

        with tempfile.TemporaryDirectory() as tmp:
            stack_.postgres.psql("postgres", "CREATE DATABASE bench_direct")
            source = libpq_environment(stack_.postgres.url(production))
            target = libpq_environment(stack_.postgres.url("bench_direct"))
            dump_s = timed(
                [pg_binary("pg_dump"), "--format=custom", f"--file={tmp}/direct.dump"], source
            )
            restore_s = timed(
                [pg_binary("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                 "--dbname=bench_direct", f"{tmp}/direct.dump"],
                target,
            )  # fmt: skip
            # What Hatchery does (HATCHERY_REFRESH_RESTORE_JOBS=2), for reference.
            stack_.postgres.psql("postgres", "CREATE DATABASE bench_direct_jobs")
            restore_jobs_s = timed(
                [pg_binary("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                 "--jobs=2", "--dbname=bench_direct_jobs", f"{tmp}/direct.dump"],
                target,
            )  # fmt: skip
        total, run = await refresh_and_follow(client, project["id"])
    return {
        "size": size, "fill": fill_s, "dump": dump_s, "restore": restore_s, "total": total,
        "restore_jobs": restore_jobs_s,
        "steps": {s["name"]: s["duration_ms"] / 1000 for s in run["steps"]},
        "masking": run["result"]["masking"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    args = parser.parse_args()
    with stack() as stack_:
        worker = start(["worker"], stack_.env)
        api, port = start_api(stack_.env)
        try:
            f = asyncio.run(measure(stack_, port, args.users, args.events))
        finally:
            stop(api)
            stop(worker)
    direct = f["dump"] + f["restore"]
    ratio = f["total"] / direct
    print(
        f"refresh of a {f['size'] / 2**30:.2f} GiB production database "
        f"({args.users} users, {args.events} events; filled in {f['fill']:.1f} s), seconds"
    )
    print(f"hatchery: refresh POST -> SSE end      {f['total']:8.3f}")
    print("          steps: " + ", ".join(f"{k} {v:.3f}" for k, v in f["steps"].items()))
    print(f"direct:   pg_dump -Fc                  {f['dump']:8.3f}")
    print(f"direct:   pg_restore                   {f['restore']:8.3f}")
    print(
        f"direct:   pg_restore --jobs=2          {f['restore_jobs']:8.3f}  (as Hatchery restores)"
    )
    print(
        f"ratio refresh / (pg_dump + pg_restore)  {ratio:.2f}x  "
        f"(target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})"
    )
    print(
        "ratio refresh / (pg_dump + pg_restore --jobs=2)  "
        f"{f['total'] / (f['dump'] + f['restore_jobs']):.2f}x"
    )
    masked = f["masking"]
    print(
        f"masking: {masked['rows']} rows in {masked['seconds']:.3f} s = "
        f"{masked['rows_per_second']} rows/s"
    )


if __name__ == "__main__":
    main()
