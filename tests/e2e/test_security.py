"""The ways in, tried as an attacker with ordinary scoped keys would, and each refused."""

import asyncio
import contextlib
import os
import pickle
import shutil
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchery import crypto, db, git, queue
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis
from hatchery.keys.models import Scope
from hatchery.plans.adopt import UNREACHABLE
from tests.conftest import bearer, make_key
from tests.e2e.helpers import WorkingCopy, active_project, deploy, get_project, wait_for_run
from tests.sse import follow


async def scoped_token(engine: AsyncEngine, settings: Settings, *scopes: Scope) -> str:
    async with db.create_sessionmaker(engine)() as session:
        _, token = await make_key(session, settings, *scopes)
    return token


async def adopt(
    client: httpx.AsyncClient, token: str, repository: str, database_url: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/projects",
        json={
            "slug": f"in-{uuid.uuid4().hex[:8]}",
            "name": "intruder",
            "adopt": {
                "repository_url": repository,
                "environments": [{"name": "staging", "database_url": database_url}],
            },
        },
        headers=bearer(token),
    )


def project_count(postgres: EmbeddedPostgres) -> int:
    return int(postgres.psql("hatchery", "SELECT count(*) FROM project"))


@pytest.fixture
async def writer(engine: AsyncEngine, settings: Settings) -> str:
    return await scoped_token(engine, settings, Scope.projects_write, Scope.projects_read)


def service_repo(root: Path) -> str:
    """A minimal repository with one Alembic revision under the file:// root."""
    path = root / "service"
    (path / "alembic" / "versions").mkdir(parents=True)
    (path / "alembic.ini").write_text("[alembic]\nscript_location = alembic\n")
    template = Path(__file__).parents[1] / "templates" / "slow-baseline" / "template"
    shutil.copy(template / "alembic" / "env.py", path / "alembic" / "env.py")
    shutil.copy(template / "requirements.txt", path / "requirements.txt")
    for args in (
        ["init", "--quiet", "--initial-branch=main"],
        ["add", "--all"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path.as_uri()


# 1. Git is never handed an option, nor Hatchery's environment.


async def test_a_repository_url_that_is_a_git_option_is_refused_and_runs_nothing(
    live: httpx.AsyncClient, writer: str, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    before = project_count(postgres)
    for url in (
        f"--upload-pack=sh -c 'env > {marker}'",
        f"-uenv>{marker}",
        f"ext::sh -c env% >{marker}",
        "http://git.example.com/team/repo.git",
        "git.example.com:/team/repo.git",
    ):
        response = await adopt(live, writer, url, "postgresql://u:p@db.example.com/x")
        assert response.status_code == 422, (url, response.text)
        assert response.json()["errors"][0]["field"] == "body.adopt.repository_url"
    assert project_count(postgres) == before

    # And should one reach git anyway: `--` makes it a name, the allow-list refuses `ext`.
    mirror = tmp_path / "mirror.git"
    await git.init_bare(mirror)
    for url in (f"--upload-pack=touch {marker}", f"ext::sh -c touch% {marker}"):
        with pytest.raises(git.GitError):
            await git.fetch(mirror, url, timeout=30, allow_file=False)
    await asyncio.sleep(0.5)
    assert not marker.exists()


async def test_git_and_what_it_runs_see_none_of_hatcherys_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HATCHERY_DATABASE_URL", "postgresql://hatchery:leaked-password@db/x")
    shown = await git.git("-c", "alias.show-env=!env", "show-env")
    assert isinstance(shown, str)
    assert "leaked-password" not in shown and "HATCHERY_" not in shown
    assert "GIT_ALLOW_PROTOCOL=https:ssh" in shown and "GIT_CONFIG_NOSYSTEM=1" in shown


async def test_git_errors_are_stored_without_credentials(
    live: httpx.AsyncClient, writer: str, postgres: EmbeddedPostgres
) -> None:
    secret = "tok-" + uuid.uuid4().hex
    database_url = f"postgresql://u:p@127.0.0.1:{postgres.port}/nowhere"
    response = await adopt(
        live, writer, f"https://ci-bot:{secret}@127.0.0.1:9/team/repo.git", database_url
    )
    assert response.status_code == 202, response.text
    assert secret not in response.text
    run = await wait_for_run(live, writer, response.json()["run"]["id"])
    assert run["status"] == "failed"
    project = await get_project(live, writer, response.json()["project"]["id"])
    assert "git failed" in project["initialization_error"]
    assert secret not in str(run) + str(project)


# 2. No repository of Hatchery's, and nothing outside the configured root.


async def test_another_projects_repository_and_paths_outside_the_root_are_refused(
    live: httpx.AsyncClient,
    writer: str,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    repos: Path,
) -> None:
    hatched, _ = await active_project(live, live_admin_token, "victim-repo")
    inside = service_repo(repos)
    (repos / "escape").symlink_to(Path(hatched["repository_url"].removeprefix("file://")))
    before = project_count(postgres)
    for url in (
        hatched["repository_url"],
        Path(hatched["repository_url"].removeprefix("file://")).as_posix(),
        "file:///etc",
        (repos / "escape").as_uri(),
        inside.replace("file://", "file://other-host"),
        inside + "/../../..",
    ):
        response = await adopt(live, writer, url, "postgresql://u:p@db.example.com/x")
        assert response.status_code == 422, (url, response.text)
    assert project_count(postgres) == before


# 3. Adopted databases: only where the operator allows, never the control database, and
#    one answer for every connection failure.


def own_address() -> str:
    """This machine's address on its network (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only a route is chosen
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), "this test needs a non-loopback address"
    return address


@contextlib.asynccontextmanager
async def chatty_server(host: str) -> AsyncIterator[int]:
    """An open port that is no PostgreSQL: it answers every connection with noise."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host, 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_adopted_databases_are_refused_outside_what_the_operator_allows(
    live: httpx.AsyncClient, writer: str, postgres: EmbeddedPostgres, repos: Path
) -> None:
    repository = service_repo(repos)
    port = postgres.port
    before = project_count(postgres)
    refused = {
        f"postgresql://hatchery:{postgres.password}@127.0.0.1:{port}/hatchery": "control",
        f"postgresql://hatchery:{postgres.password}@localhost:{port}/postgres": "loopback",
        f"postgresql://u:p@127.0.0.1:{port}/template1": "maintenance",
        "postgresql://u:p@169.254.169.254:80/x": "metadata",
        "postgresql://u:p@[fe80::1]:5432/x": "link-local",
        "postgresql://u:p@127.0.0.1:1/x": "loopback",
        f"postgresql://u:p@127.0.0.1:{port + 1}/x": "loopback",
        "postgresql://u:p@0.0.0.0:5432/x": "loopback",
        "postgresql://u:p@db.example.com/x?host=/var/run/postgresql": "socket",
    }
    for url, why in refused.items():
        response = await adopt(live, writer, repository, url)
        assert response.status_code == 422, (why, response.text)
        assert postgres.password not in response.text
    assert project_count(postgres) == before


async def test_connection_failures_all_read_the_same(
    live: httpx.AsyncClient, writer: str, postgres: EmbeddedPostgres, repos: Path
) -> None:
    repository = service_repo(repos)
    address = own_address()
    async with chatty_server(address) as open_port:
        closed = socket.socket()
        closed.bind((address, 0))  # bound, never listening: a closed port
        cases = {
            "unknown host": "postgresql://u:p@no-such-host.invalid:5432/x",
            "closed port": f"postgresql://u:p@{address}:{closed.getsockname()[1]}/x",
            "not postgresql": f"postgresql://u:p@{address}:{open_port}/x",
            "bad password": f"postgresql://hatchery:wrong@127.0.0.1:{postgres.port}/hatchery_x",
        }
        errors = {}
        for name, url in cases.items():
            response = await adopt(live, writer, repository, url)
            assert response.status_code == 202, (name, response.text)
            run = await wait_for_run(live, writer, response.json()["run"]["id"])
            failed = next(s for s in run["steps"] if s["status"] == "failed")
            assert failed["name"] == "verify_databases", (name, failed)
            errors[name] = failed["error"]
        closed.close()
    assert set(errors.values()) == {f"staging: {UNREACHABLE}"}, errors


# 4. A new project's deploy token goes to the key that made it, once.


async def test_the_deploy_token_is_shown_only_to_the_key_that_created_the_project(
    live: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    creator = await scoped_token(engine, settings, Scope.projects_write, Scope.projects_read)
    reader = await scoped_token(engine, settings, Scope.projects_read)
    response = await live.post(
        "/api/v1/projects",
        json={"slug": "token-owner", "name": "x", "template": "fastapi-service"},
        headers=bearer(creator),
    )
    run_id = response.json()["run"]["id"]
    frames = await follow(live, run_id, reader)
    assert frames[-1].data["status"] == "succeeded"
    early = (await live.get(f"/api/v1/runs/{run_id}", headers=bearer(reader))).json()
    assert "deploy_token" not in early["result"]
    prefix = early["result"]["deploy_token_prefix"]
    mine = (await live.get(f"/api/v1/runs/{run_id}", headers=bearer(creator))).json()
    token = mine["result"]["deploy_token"]
    assert token.startswith(f"hat_{prefix}_")
    again = (await live.get(f"/api/v1/runs/{run_id}", headers=bearer(creator))).json()
    assert "deploy_token" not in again["result"]
    assert all(token not in str(f.data) for f in frames)
    assert (await live.get("/api/v1/projects", headers=bearer(token))).status_code == 200


# 5. Redis is no way to run code in a worker.


async def test_a_pickled_job_written_to_redis_runs_nothing(
    live: httpx.AsyncClient, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    marker = tmp_path / "pickled"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    client = queue.connect(redis_server.url)
    try:
        job_id = f"evil-{uuid.uuid4().hex}"
        job = {"t": 1, "f": "ping", "a": [Payload()], "k": {}, "et": int(time.time() * 1000)}
        await client.set(f"arq:job:{job_id}", pickle.dumps(job), ex=60)
        await client.zadd(queue.QUEUE_NAME, {job_id: int(time.time() * 1000)})
        deadline = time.monotonic() + 20
        while await client.zscore(queue.QUEUE_NAME, job_id) is not None:
            assert time.monotonic() < deadline, "the worker never took the job"
            await asyncio.sleep(0.1)
        # The worker refused it, and still does its work.
        ping = await queue.enqueue(client, "ping", time.time())
        assert ping is not None
        assert await queue.result(client, ping, timeout=20)
    finally:
        await queue.close(client)
    assert not marker.exists()

    anonymous = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        with pytest.raises(AuthenticationError):
            await anonymous.ping()
    finally:
        await anonymous.aclose()


# 6. Files are the service user's alone.


async def test_backups_and_repositories_are_private_to_the_service_user(
    live: httpx.AsyncClient, live_admin_token: str, settings: Settings, tmp_path: Path
) -> None:
    project, token = await active_project(live, live_admin_token, "private-files")
    copy = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = copy.add_revision("0002", "0001", ["CREATE TABLE secret_stuff (id int)"])
    response = await deploy(live, token, project["id"], "staging", commit, "private-1")
    assert (await wait_for_run(live, token, response.json()["id"]))["status"] == "succeeded"

    repository = Path(project["repository_url"].removeprefix("file://"))
    backups = [p for p in settings.backups_dir.rglob("*.dump") if project["id"] in str(p)]
    assert backups
    directories = [
        settings.repositories_dir,
        repository,
        settings.backups_dir,
        *backups[0].parents[:2],
    ]
    for directory in directories:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for backup in backups:
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600, backup
    for path in (settings.backups_dir, repository, backups[0]):
        attempt = subprocess.run(
            ["runuser", "-u", "nobody", "--", "cat" if path.is_file() else "ls", str(path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, path


# 8. A repository URL cannot hold a worker slot.


async def test_a_transport_that_never_returns_is_refused_and_git_is_bounded(
    live: httpx.AsyncClient, writer: str
) -> None:
    started = time.monotonic()
    response = await adopt(live, writer, "fd::0", "postgresql://u:p@db.example.com/x")
    assert response.status_code == 422
    assert time.monotonic() - started < 5

    # Whatever git starts is ended with it when its time runs out.
    with pytest.raises(git.GitError, match="took over"):
        await git.git("-c", "alias.hang=!sleep 61; sleep 62", "hang", timeout=1)
    await asyncio.sleep(0.2)
    alive = [
        p.info["cmdline"]
        for p in psutil.process_iter(["name", "cmdline", "status"])
        if p.info["name"] == "sleep" and p.info["status"] != psutil.STATUS_ZOMBIE
    ]
    assert not [c for c in alive if c and c[-1] in ("61", "62")], alive


# 9. A project's role reaches its own database only.


async def test_a_project_role_cannot_connect_to_the_control_or_maintenance_databases(
    live: httpx.AsyncClient,
    live_admin_token: str,
    postgres: EmbeddedPostgres,
    settings: Settings,
) -> None:
    project, _ = await active_project(live, live_admin_token, "fenced-in")
    sealed = postgres.psql(
        "hatchery",
        "SELECT encode(database_url, 'escape') FROM environment "
        f"WHERE project_id = '{project['id']}' AND name = 'staging'",
    ).strip()
    url = crypto.decrypt(sealed.encode(), settings.encryption_secret)
    role, password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)
    own = project["environments"][0]["database_name"]
    other_project, _ = await active_project(live, live_admin_token, "fenced-out")
    others = [other_project["environments"][0]["database_name"], "hatchery", "postgres"]

    def connect(database: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", role, "-d", database,
             "-Atc", "SELECT current_database()"],
            env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip

    assert connect(own).stdout.strip() == own
    for database in [*others, "template1"]:
        refused = connect(database)
        assert refused.returncode != 0, database
        assert "permission denied for database" in refused.stderr, refused.stderr


# 10. Bad input gets a 4xx, never a 500.


async def test_malformed_names_ids_and_expressions_get_4xx(
    live: httpx.AsyncClient, live_admin_token: str, repos: Path
) -> None:
    project, _ = await active_project(live, live_admin_token, "bad-inputs")
    base = f"/api/v1/projects/{project['id']}/environments/staging"
    admin = bearer(live_admin_token)
    run_id = project["latest_run"]["id"]
    requests: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
        ("GET", f"{base}/schema/tables/pg_catalog.pg_class", None, {}),
        ("GET", f"{base}/schema/tables/information_schema.tables", None, {}),
        ("GET", f"{base}/schema/tables/pg_toast.pg_toast_1", None, {}),
        ("POST", f"{base}/rollbacks", {"target_revision": "0001@head"}, {}),
        ("POST", f"{base}/rollbacks", {"target_revision": "head-1"}, {}),
        ("POST", f"{base}/rollbacks", {"target_revision": "+1"}, {}),
        ("POST", f"{base}/rollbacks", {"target_revision": "heads:base"}, {}),
        ("POST", f"{base}/migrations", {"target": "0001@head", "dry_run": True}, {}),
        ("POST", f"{base}/migrations", {"target": "-1"}, {}),
        ("POST", "/api/v1/keys", {"name": "x", "scopes": ["deploy"],
                                  "project_id": str(uuid.uuid4())}, {}),
        ("POST", "/api/v1/keys", {"name": "admin\u202egpj.exe", "scopes": ["deploy"]}, {}),
        ("POST", "/api/v1/projects", {"slug": "bidi", "name": "a\u2066b",
                                      "template": "fastapi-service"}, {}),
        ("POST", "/api/v1/projects", {"slug": "ctl", "name": "a\x1b[31mb",
                                      "template": "fastapi-service"}, {}),
        ("POST", "/api/v1/projects", {"slug": "branchy", "name": "x", "adopt": {
            "repository_url": service_repo(repos), "branch": "--orphan",
            "environments": [{"name": "staging", "database_url": "postgresql://u:p@h/x"}]}}, {}),
        ("POST", "/api/v1/projects", {"slug": "inipath", "name": "x", "adopt": {
            "repository_url": "https://git.example.com/x.git", "alembic_ini": "../../etc/x",
            "environments": [{"name": "staging", "database_url": "postgresql://u:p@h/x"}]}}, {}),
        ("POST", f"/api/v1/projects/{project['id']}/deployments", {
            "environment": "staging", "commit_sha": "abcd", "deployment_id": "ci\u202e1",
            "target_revision": "0001@head"}, {}),
    ]  # fmt: skip
    for stream_id in ("1" * 5000, "1" * 30 + "-0", "99999999999999999999-1", "x-1", "1-1x"):
        requests.append(
            ("GET", f"/api/v1/runs/{run_id}/events", None, {"Last-Event-ID": stream_id})
        )
    for method, path, body, headers in requests:
        response = await live.request(method, path, json=body, headers={**admin, **headers})
        if path.endswith("/events"):
            # An id the stream cannot hold is unknown: a reset and a fresh snapshot.
            assert response.status_code == 200, (headers, response.text)
            assert "event: reset" in response.text, headers
            continue
        assert 400 <= response.status_code < 500, (method, path, body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
