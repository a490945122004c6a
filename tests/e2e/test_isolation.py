"""A project's revision files are hostile input: they run in a child process that sees
nothing of Hatchery's, cannot write to its data, is stopped by its limits, and can commit
only while its run is still the worker's."""

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres
from tests.conftest import bearer, start, start_api, stop
from tests.e2e.helpers import deploy, get_project
from tests.e2e.repositories import adopt, commit_tree, database, finished
from tests.sse import follow

BASE = {
    "alembic.ini": "[alembic]\nscript_location = %(here)s/alembic\n",
    "requirements.txt": "alembic\nsqlalchemy[asyncio]\nasyncpg\n",
    "alembic/versions/0001_base.py": (
        'from alembic import op\n\nrevision = "0001"\ndown_revision = None\n\n\n'
        "def upgrade() -> None:\n    op.execute('CREATE TABLE base (id int)')\n\n\n"
        "def downgrade() -> None:\n    op.execute('DROP TABLE base')\n"
    ),
}
ENV_PY = Path(__file__).parents[1] / "templates" / "slow-baseline" / "template" / "alembic"

LEAKY = '''\
"""Tries everything a hostile revision would."""
import json
import os
import sys
import time

from alembic import op

revision = "0002"
down_revision = "0001"
TARGETS = {targets}


def leak(where):
    found = {{"where": where, "uid": os.getuid(), "environ": dict(os.environ)}}
    for path in ("/proc/%d/environ" % os.getppid(), "/proc/1/environ"):
        try:
            with open(path, "rb") as source:
                found[path] = source.read().decode(errors="replace")
        except OSError as exc:
            found[path] = "refused: " + type(exc).__name__
    for name, directory in TARGETS.items():
        try:
            with open(os.path.join(directory, "leak-" + where), "w") as target:
                target.write(json.dumps(dict(os.environ)))
            found["wrote " + name] = True
        except OSError as exc:
            found["wrote " + name] = "refused: " + type(exc).__name__
    print("LEAK " + json.dumps(found), file=sys.stderr, flush=True)


leak("import")


def upgrade() -> None:
    leak("upgrade")
    op.execute("CREATE TABLE leaked (id int)")
    if not op.get_context().as_sql:
        time.sleep({sleep})


def downgrade() -> None:
    op.execute("DROP TABLE leaked")
'''


def service(root: Path, name: str) -> Path:
    repo = root / name
    (repo / "alembic").mkdir(parents=True)
    (repo / "alembic" / "env.py").write_text((ENV_PY / "env.py").read_text())
    commit_tree(repo, BASE)
    return repo


async def adopted(
    client: httpx.AsyncClient, token: str, postgres: EmbeddedPostgres, repo: Path, slug: str
) -> tuple[dict[str, Any], str]:
    name, url = database(postgres)
    created = await adopt(client, token, slug, repo, [("staging", url)])
    run = await finished(client, token, created["run"]["id"])
    assert run["status"] == "succeeded", run["error"]
    response = await deploy(
        client, token, created["project"]["id"], "staging", head(repo), f"{slug}-0"
    )
    assert (await finished(client, token, response.json()["id"]))["status"] == "succeeded"
    return await get_project(client, token, created["project"]["id"]), name


def head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def limited(
    isolated_env: dict[str, str], scratch_dir: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """An api and a worker whose migrations may run 6 s at most."""
    env = {**isolated_env, "HATCHERY_MIGRATION_TIMEOUT_SECONDS": "6"}
    worker = start(["worker"], env, scratch_dir / "limited-worker.log")
    api, url = start_api(env, scratch_dir / "limited-api.log")
    yield url, env
    stop(api)
    stop(worker)


async def test_a_hostile_revision_sees_nothing_of_hatchery_writes_nothing_of_it_and_is_stopped(
    limited: tuple[str, dict[str, str]],
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    settings: Settings,
    repos: Path,
    scratch_dir: Path,
) -> None:
    url, _ = limited
    repo = service(repos, "hostile")
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        project, database_name = await adopted(client, live_admin_token, postgres, repo, "hostile")
        checkout = repos / "hostile"
        targets = {
            "backups": str(settings.backups_dir),
            "repositories": str(settings.repositories_dir),
            "hatchery source": str(Path(__file__).parents[2]),
            "its own checkout": ".",
            "its scratch": "$HOME",
        }
        source = LEAKY.format(targets=_targets_source(targets), sleep=60)
        commit = commit_tree(checkout, {"alembic/versions/0002_leak.py": source}, "leak")

        response = await deploy(client, live_admin_token, project["id"], "staging", commit, "h-1")
        run_id = response.json()["id"]
        started = time.monotonic()
        frames = await follow(client, run_id, live_admin_token, timeout=120)
        run = await finished(client, live_admin_token, run_id)
        # The api reads history and dry runs through a worker: it never imports the file.
        base = f"/api/v1/projects/{project['id']}/environments/staging"
        dry = await client.post(
            f"{base}/migrations",
            json={"target": "head", "dry_run": True, "commit_sha": commit},
            headers=bearer(live_admin_token),
        )
        assert dry.status_code == 200, dry.text
        assert dry.json()["pending"] == ["0002"]
        history = await client.get(f"{base}/revisions", headers=bearer(live_admin_token))
        assert history.status_code == 200, history.text

    assert run["status"] == "failed"
    failed = next(s for s in run["steps"] if s["status"] == "failed")
    assert failed["name"] == "migrate" and "wall-clock limit" in failed["error"], failed
    assert time.monotonic() - started < 40
    assert postgres.psql(database_name, "SELECT version_num FROM alembic_version").strip() == "0001"
    assert postgres.psql(database_name, "SELECT to_regclass('leaked')").strip() == ""

    leaks = [
        json.loads(f.data["message"].split("LEAK ", 1)[1])
        for f in frames
        if f.event == "step.log" and "LEAK " in f.data.get("message", "")
    ]
    assert {leak["where"] for leak in leaks} == {"import", "upgrade"}
    for leak in leaks:
        environ = json.dumps(leak["environ"])
        assert "HATCHERY_" not in environ and postgres.password not in environ, environ
        assert leak["uid"] != 0
        assert leak["/proc/1/environ"].startswith("refused")
        assert leak["wrote its scratch"] is True
        for place in ("backups", "repositories", "hatchery source", "its own checkout"):
            assert str(leak[f"wrote {place}"]).startswith("refused"), (place, leak)
    assert not list(settings.backups_dir.rglob("leak-*"))
    assert not list(settings.repositories_dir.rglob("leak-*"))
    api_log = (scratch_dir / "limited-api.log").read_text()
    assert "LEAK" not in api_log and "leak-import" not in api_log


def _targets_source(targets: dict[str, str]) -> str:
    pairs = ", ".join(
        f"{name!r}: " + ('os.environ["HOME"]' if path == "$HOME" else repr(path))
        for name, path in targets.items()
    )
    return "{" + pairs + "}"


async def test_a_run_taken_away_mid_migration_rolls_back_instead_of_committing(
    live: httpx.AsyncClient, live_admin_token: str, postgres: EmbeddedPostgres, repos: Path
) -> None:
    repo = service(repos, "taken")
    project, database_name = await adopted(live, live_admin_token, postgres, repo, "taken-away")
    slow = LEAKY.format(targets="{}", sleep=4)
    commit = commit_tree(repo, {"alembic/versions/0002_slow.py": slow}, "slow")
    response = await deploy(live, live_admin_token, project["id"], "staging", commit, "t-1")
    run_id = response.json()["id"]
    await follow(
        live, run_id, live_admin_token,
        until=lambda f: f.event == "step.log" and "LEAK" in f.data.get("message", "")
        and '"upgrade"' in f.data["message"],
    )  # fmt: skip
    # What a reaper does to a run it believes lost.
    postgres.psql(
        "hatchery",
        f"UPDATE run SET status = 'failed', error = 'reaped' WHERE id = '{run_id}'",
    )
    await asyncio.sleep(8)
    assert postgres.psql(database_name, "SELECT version_num FROM alembic_version").strip() == "0001"
    assert postgres.psql(database_name, "SELECT to_regclass('leaked')").strip() == ""


async def test_a_second_worker_leaves_a_blocked_migration_alone_and_its_heartbeat_goes_on(
    isolated_env: dict[str, str],
    isolated_api: str,
    scratch_dir: Path,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    repos: Path,
) -> None:
    workers = [start(["worker"], isolated_env, scratch_dir / f"blocked-{i}.log") for i in (1, 2)]
    try:
        async with httpx.AsyncClient(base_url=isolated_api, timeout=120) as client:
            repo = service(repos, "blocked")
            project, database_name = await adopted(
                client, live_admin_token, postgres, repo, "blocked"
            )
            # Sleeps well past HATCHERY_RUN_STALE_AFTER_SECONDS (3 s), blocking its process.
            slow = LEAKY.format(targets="{}", sleep=10)
            commit = commit_tree(repo, {"alembic/versions/0002_slow.py": slow}, "slow")
            response = await deploy(
                client, live_admin_token, project["id"], "staging", commit, "b-1"
            )
            run_id = response.json()["id"]
            await follow(
                client, run_id, live_admin_token,
                until=lambda f: f.event == "step.log" and '"upgrade"' in f.data.get("message", ""),
            )  # fmt: skip
            beats = []
            for _ in range(3):
                run = (
                    await client.get(f"/api/v1/runs/{run_id}", headers=bearer(live_admin_token))
                ).json()
                beats.append(run["heartbeat_at"])
                await asyncio.sleep(2.5)
            run = await finished(client, live_admin_token, run_id)
    finally:
        for worker in workers:
            stop(worker)
    assert len(set(beats)) == 3, beats  # the worker kept beating while the child slept
    assert run["status"] == "succeeded", run["error"]
    assert postgres.psql(database_name, "SELECT version_num FROM alembic_version").strip() == "0002"
    project = await _project(isolated_api, live_admin_token, project["id"])
    assert project["environments"][0]["revision"] == "0002"


async def _project(url: str, token: str, project_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await get_project(client, token, project_id)
