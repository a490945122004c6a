"""The fault suite: two apis and two workers on one PostgreSQL and Redis, with processes
killed and servers restarted mid-run. Prints a table of tries, passes, and anything lost
or duplicated. Not part of `make test` (several minutes):

    .venv/bin/python -m bench.faults [--tries 5]

- SIGKILL of the worker migrating (tries): the run fails `worker_lost`, the database keeps
  its old revision, the lock is free, and a redeploy lands.
- SIGKILL of the worker initializing (tries): a retry finishes with no duplicate database,
  role, commit or key.
- Redis restarted mid-run, PostgreSQL restarted mid-run: the run ends (never `worker_lost`
  while its worker lives), no process restarts.
- SIGTERM of the api serving 10 streams: they resume on the other api and see every
  event once, in order.
"""

import argparse
import asyncio
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis.asyncio import Redis

from bench.common import Stack, stack, start, start_api, stop

ROOT = Path(__file__).resolve().parents[1]
SLOW = "DO $$ BEGIN PERFORM pg_sleep(4); END $$"


@dataclass
class Row:
    scenario: str
    tries: int = 0
    passed: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Cluster:
    stack: Stack
    apis: list[tuple[subprocess.Popen[bytes], int]]
    workers: list[subprocess.Popen[bytes]]

    def url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.apis[index][1]}"

    def alive(self) -> bool:
        return all(p.poll() is None for p, _ in self.apis) and all(
            w.poll() is None for w in self.workers
        )

    def migrating_worker(self) -> subprocess.Popen[bytes] | None:
        """The worker whose child runs a project's code right now."""
        for worker in self.workers:
            if worker.poll() is not None:
                continue
            children = psutil.Process(worker.pid).children(recursive=True)
            if any("hatchery_child.py" in " ".join(c.cmdline()) for c in children):
                return worker
        return None

    def replace(self, worker: subprocess.Popen[bytes]) -> None:
        self.workers[self.workers.index(worker)] = start(["worker"], self.stack.env)


async def wait_for(client: httpx.AsyncClient, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run.get("status") in ("succeeded", "failed", "cancelled"):
            return run
        await asyncio.sleep(0.2)
    raise TimeoutError(run_id)


async def until_step(client: httpx.AsyncClient, run_id: str, step: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if any(s["name"] == step and s["status"] == "running" for s in run["steps"]):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{run_id} never began {step}")


async def hatch(client: httpx.AsyncClient, slug: str, template: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/projects",
        json={"slug": slug, "name": slug, "template": template, "environments": ["staging"]},
    )
    created: dict[str, Any] = response.json()
    return created


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def push_revision(repository: str, work: Path, revision: str, down: str, sql: str) -> str:
    if not work.exists():
        git("clone", "--quiet", repository, str(work))
    (work / "alembic/versions" / f"{revision}.py").write_text(
        f"from alembic import op\n\nrevision = {revision!r}\ndown_revision = {down!r}\n\n\n"
        f"def upgrade() -> None:\n    op.execute({sql!r})\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )
    git("add", "--all", cwd=work)
    git("-c", "user.name=f", "-c", "user.email=f@f", "commit", "-qm", revision, cwd=work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def psql(cluster: Cluster, database: str, sql: str) -> str:
    return cluster.stack.postgres.psql(database, sql).strip()


async def kill_mid_migrate(cluster: Cluster, client: httpx.AsyncClient, tries: int) -> Row:
    row = Row("SIGKILL mid-migrate")
    for i in range(tries):
        row.tries += 1
        created = await hatch(client, f"kill-mig-{i}", "fastapi-service")
        hatched = await wait_for(client, created["run"]["id"])
        token = hatched["result"]["deploy_token"]
        project = created["project"]
        database = psql(cluster, "hatchery", f"SELECT database_name FROM environment "
                                              f"WHERE project_id = '{project['id']}'")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            commit = push_revision(project["repository_url"], Path(tmp) / "w", "0002", "0001", SLOW)
        headers = {"Authorization": f"Bearer {token}"}
        body = {"environment": "staging", "commit_sha": commit, "deployment_id": f"k{i}"}
        deploy_path = f"/api/v1/projects/{project['id']}/deployments"
        run_id = (await client.post(deploy_path, json=body, headers=headers)).json()["id"]
        await until_step(client, run_id, "migrate")
        await asyncio.sleep(1)
        victim = cluster.migrating_worker()
        if victim is None:
            row.notes.append(f"try {i}: no migrating worker found")
            continue
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        cluster.replace(victim)
        run = await wait_for(client, run_id)
        version = psql(cluster, database, "SELECT version_num FROM alembic_version")
        body["deployment_id"] = f"k{i}-again"
        again = (await client.post(deploy_path, json=body, headers=headers)).json()["id"]
        redeployed = await wait_for(client, again)
        ok = (
            run["error_code"] == "worker_lost"
            and version == "0001"
            and redeployed["status"] == "succeeded"
        )
        row.passed += ok
        if not ok:
            row.notes.append(f"try {i}: {run['error_code']} {version} {redeployed['error']}")
    return row


async def kill_mid_initialize(cluster: Cluster, client: httpx.AsyncClient, tries: int) -> Row:
    row = Row("SIGKILL mid-initialize")
    for i in range(tries):
        row.tries += 1
        created = await hatch(client, f"kill-init-{i}", "slow-baseline")
        project_id, run_id = created["project"]["id"], created["run"]["id"]
        await until_step(client, run_id, "apply_baseline")
        await asyncio.sleep(0.5)
        victim = cluster.migrating_worker()
        if victim is None:
            row.notes.append(f"try {i}: no migrating worker found")
            continue
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        cluster.replace(victim)
        lost = await wait_for(client, run_id)
        retry = await client.post(f"/api/v1/projects/{project_id}/initialization/retry")
        resumed = await wait_for(client, retry.json()["id"])
        prefix = f"kill_init_{i}_{project_id.replace('-', '')[:8]}_%"
        databases = psql(cluster, "postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{prefix}'")  # fmt: skip
        roles = psql(cluster, "postgres", f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{prefix}'")  # fmt: skip
        keys = psql(cluster, "hatchery", f"SELECT count(*) FROM api_key WHERE project_id = '{project_id}'")  # fmt: skip
        repository = created["project"]["repository_url"].removeprefix("file://")
        commits = git("--git-dir", repository, "rev-list", "--count", "main")
        duplicated = (databases, roles, keys, commits) != ("1", "1", "1", "1")
        ok = lost["error_code"] == "worker_lost" and resumed["status"] == "succeeded"
        row.passed += ok and not duplicated
        row.duplicated += duplicated
        if not ok or duplicated:
            row.notes.append(f"try {i}: {lost['error_code']} {resumed['status']} "
                             f"{databases}/{roles}/{keys}/{commits}")  # fmt: skip
    return row


async def restart_mid_run(cluster: Cluster, client: httpx.AsyncClient, server: str) -> Row:
    row = Row(f"{server} restart mid-run", tries=1)
    created = await hatch(client, f"restart-{server.lower()}", "slow-baseline")
    run_id = created["run"]["id"]
    await until_step(client, run_id, "apply_baseline")
    if server == "Redis":
        cluster.stack.redis.stop()
        await asyncio.sleep(3)
        cluster.stack.redis.start()
    else:
        cluster.stack.postgres.restart(downtime=3)
    run = await wait_for(client, run_id, timeout=180)
    # The run in flight ends (succeeded, or failed saying why: its own database went away
    # with the server), its worker is not called lost, and nothing needs a restart.
    after = await wait_for(
        client, (await hatch(client, f"after-{server.lower()}", "slow-baseline"))["run"]["id"]
    )
    ok = run["error_code"] != "worker_lost" and cluster.alive() and after["status"] == "succeeded"
    row.passed += ok
    row.notes.append(f"the run in flight: {run['status']} {run['error_code'] or ''}".rstrip())
    return row


async def follow(url: str, token: str, run_id: str, seen: list[str]) -> None:
    """Follow a run to its end, reconnecting (to `url`, then to the other api) with the
    last id seen."""
    urls = url.split(",")
    headers = {"Authorization": f"Bearer {token}"}
    attempt = 0
    while True:
        if seen:
            headers["Last-Event-ID"] = seen[-1]
        target = urls[min(attempt, len(urls) - 1)]
        try:
            async with (
                httpx.AsyncClient(base_url=target, timeout=120) as client,
                client.stream("GET", f"/api/v1/runs/{run_id}/events", headers=headers) as stream,
            ):
                event_id, event = None, None
                async for line in stream.aiter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line == "" and event is not None:
                        if event not in ("snapshot", "end", "reset") and event_id:
                            seen.append(event_id)
                        if event == "end":
                            return
                        event = None
        except httpx.HTTPError:
            pass
        attempt += 1
        await asyncio.sleep(0.2)


async def sigterm_api(cluster: Cluster, client: httpx.AsyncClient) -> Row:
    row = Row("api SIGTERM, 10 open streams", tries=10)
    created = await hatch(client, "sigterm-api", "slow-baseline")
    run_id = created["run"]["id"]
    urls = f"{cluster.url(0)},{cluster.url(1)}"
    token = cluster.stack.admin_token
    seen: list[list[str]] = [[] for _ in range(10)]
    followers = [asyncio.create_task(follow(urls, token, run_id, s)) for s in seen]
    await until_step(client, run_id, "apply_baseline")
    cluster.apis[0][0].send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*followers), 180)
    reference = await _log_ids(cluster, run_id)
    for ids in seen:
        lost = len(set(reference) - set(ids))
        duplicated = len(ids) - len(set(ids))
        row.lost += lost
        row.duplicated += duplicated
        row.passed += not lost and not duplicated and ids == sorted(ids, key=_position)
    cluster.apis[0] = start_api(cluster.stack.env)
    return row


async def _log_ids(cluster: Cluster, run_id: str) -> list[str]:
    redis = Redis.from_url(cluster.stack.redis.url)
    try:
        entries = await redis.xrange(f"hatchery:run:{run_id}:events")
    finally:
        await redis.aclose()
    return [entry_id.decode() for entry_id, _ in entries]


def _position(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


async def measure(cluster: Cluster, tries: int) -> list[Row]:
    headers = {"Authorization": f"Bearer {cluster.stack.admin_token}"}
    async with httpx.AsyncClient(base_url=cluster.url(1), headers=headers, timeout=60) as client:
        return [
            *(
                [
                    await kill_mid_migrate(cluster, client, tries),
                    await kill_mid_initialize(cluster, client, tries),
                ]
                if tries
                else []
            ),
            await restart_mid_run(cluster, client, "Redis"),
            await restart_mid_run(cluster, client, "PostgreSQL"),
            await sigterm_api(cluster, client),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    env = {
        "HATCHERY_RUN_HEARTBEAT_SECONDS": "0.5",
        "HATCHERY_RUN_STALE_AFTER_SECONDS": "3",
        "HATCHERY_REAPER_INTERVAL_SECONDS": "1",
        "HATCHERY_WORKER_HEARTBEAT_SECONDS": "1",
        "HATCHERY_EXTRA_TEMPLATES_DIR": str(ROOT / "tests" / "templates"),
    }
    with stack(**env) as found:
        cluster = Cluster(
            found,
            [start_api(found.env), start_api(found.env)],
            [start(["worker"], found.env), start(["worker"], found.env)],
        )
        try:
            rows = asyncio.run(measure(cluster, args.tries))
        finally:
            for process, _ in cluster.apis:
                stop(process)
            for worker in cluster.workers:
                stop(worker)
    print(f"{'scenario':34} {'tries':>5} {'passed':>6} {'lost':>5} {'duplicated':>10}")
    for row in rows:
        print(f"{row.scenario:34} {row.tries:5} {row.passed:6} {row.lost:5} {row.duplicated:10}")
        for note in row.notes:
            print(f"    {note}")
    failed = [r for r in rows if r.passed != r.tries]
    print("all passed" if not failed else f"FAILED: {', '.join(r.scenario for r in failed)}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
