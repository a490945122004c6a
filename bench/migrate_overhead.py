"""Migration overhead: a 10-revision upgrade through Hatchery beside Alembic run directly.

One real api and worker. A hatched project's staging database gets 10 new revisions
(tables with rows) through a deploy event, timed from the POST to the SSE `end`: the run
reuses the project's Python environment, and runs its preflight and migration in child
processes. In the same run an identical copy of that database (CREATE DATABASE ...
TEMPLATE) is dumped with a plain `pg_dump -Fc` and upgraded with `alembic upgrade head`
the project's way (in a checkout of the same commit, with the project's environment),
each timed as a command. Also printed: the first build of the project's environment, when
the project was hatched (uv, an empty cache for this run).

    .venv/bin/python -m bench.migrate_overhead [--revisions 10] [--rows 20000]
"""

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Stack, stack, start, start_api, stop
from hatchery.pgtools import libpq_environment, pg_binary


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def add_revisions(clone: Path, count: int, rows: int) -> str:
    for i in range(2, count + 2):
        body = (
            f"    op.execute('CREATE TABLE bench_{i} (id bigserial PRIMARY KEY, label text, n int)')\n"
            f'    op.execute("INSERT INTO bench_{i} (label, n) SELECT md5(g::text), g '
            f'FROM generate_series(1, {rows}) g")\n'
            f"    op.execute('CREATE INDEX ix_bench_{i}_n ON bench_{i} (n)')\n"
        )
        (clone / "alembic/versions" / f"{i:04d}_bench.py").write_text(
            f"from alembic import op\n\nrevision = '{i:04d}'\ndown_revision = '{i - 1:04d}'\n\n\n"
            f"def upgrade() -> None:\n{body}\n\ndef downgrade() -> None:\n"
            f"    op.execute('DROP TABLE bench_{i}')\n"
        )
    git("add", "--all", cwd=clone)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench revisions", cwd=clone)
    git("push", "--quiet", "origin", "HEAD:main", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


async def hatch(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    created = (
        await client.post(
            "/api/v1/projects",
            json={
                "slug": "bench-mig",
                "name": "b",
                "template": "fastapi-service",
                "environments": ["staging"],
            },
        )
    ).json()
    while True:
        run = (await client.get(f"/api/v1/runs/{created['run']['id']}")).json()
        if run["status"] in {"succeeded", "failed"}:
            break
        await asyncio.sleep(0.1)
    assert run["status"] == "succeeded", run
    project = (await client.get(f"/api/v1/projects/{created['project']['id']}")).json()
    return project, run


async def deploy_and_follow(
    client: httpx.AsyncClient, project_id: str, token: str, commit: str
) -> tuple[float, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    response = await client.post(
        f"/api/v1/projects/{project_id}/deployments",
        json={"environment": "staging", "commit_sha": commit, "deployment_id": "bench-1"},
        headers=headers,
    )
    run_id = response.json()["id"]
    async with client.stream(
        "GET", f"/api/v1/runs/{run_id}/events", headers=headers, timeout=600
    ) as events:
        async for line in events.aiter_lines():
            if line == "event: end":
                break
    wall = time.monotonic() - started
    run = (await client.get(f"/api/v1/runs/{run_id}", headers=headers)).json()
    assert run["status"] == "succeeded", run
    return wall, run


def timed(command: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    started = time.monotonic()
    subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=10)
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    with stack() as stack_:
        worker = start(["worker"], stack_.env)
        api, port = start_api(stack_.env)
        try:
            figures = asyncio.run(measure(stack_, port, args.revisions, args.rows))
        finally:
            stop(api)
            stop(worker)
    hatchery_total, alembic_s, pg_dump_s, steps, first_build = figures
    direct = alembic_s + pg_dump_s
    print(f"{args.revisions}-revision upgrade, {args.rows} rows per new table (seconds)")
    print(f"hatchery: deploy event -> SSE end  {hatchery_total:7.3f}")
    print("          steps: " + ", ".join(f"{k} {v:.3f}" for k, v in steps.items()))
    print(f"direct:   alembic upgrade head      {alembic_s:7.3f}")
    print(f"direct:   pg_dump -Fc               {pg_dump_s:7.3f}")
    print(
        f"ratio total / (alembic + pg_dump)  {hatchery_total / direct:.2f}x  (target <= 1.3x: {'met' if hatchery_total / direct <= 1.3 else 'MISSED'})"
    )
    print(f"ratio backup step / pg_dump        {steps['backup'] / pg_dump_s:.2f}x")
    print(f"first build of the project's environment (uv, empty cache): {first_build:.3f}")


async def measure(
    stack_: Stack, port: int, revisions: int, rows: int
) -> tuple[float, float, float, dict[str, float], float]:
    headers = {"Authorization": f"Bearer {stack_.admin_token}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=600
    ) as client:
        project, hatched = await hatch(client)
        token = hatched["result"]["deploy_token"]
        built = next(s for s in hatched["steps"] if s["name"] == "dependencies")
        python = built["output"]["python"]
        staging = f"bench_mig_{project['id'].replace('-', '')[:8]}_staging"
        with tempfile.TemporaryDirectory() as tmp:
            clone = Path(tmp) / "clone"
            git("clone", "--quiet", project["repository_url"], str(clone))
            commit = add_revisions(clone, revisions, rows)
            stack_.postgres.psql("postgres", f"CREATE DATABASE bench_direct TEMPLATE {staging}")
            direct_url = stack_.postgres.url("bench_direct")
            env = {**libpq_environment(direct_url), "DATABASE_URL": direct_url}
            # As the project's own README would: its Python environment, from the ini's dir.
            pg_dump_s = timed(
                [pg_binary("pg_dump"), "--format=custom", f"--file={tmp}/direct.dump"], env
            )
            alembic_s = timed(
                [python, "-m", "alembic", "upgrade", "head"],
                {**os.environ, **env},
                cwd=clone,
            )
            total, run = await deploy_and_follow(client, project["id"], token, commit)
    steps = {s["name"]: s["duration_ms"] / 1000 for s in run["steps"]}
    return total, alembic_s, pg_dump_s, steps, built["duration_ms"] / 1000


if __name__ == "__main__":
    main()
