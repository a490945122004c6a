import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

import bench.common as bench
from bench.common import start, stop
from hatchery import db, queue
from hatchery.app import create_app
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis
from hatchery.keys import service as keys
from hatchery.keys.models import ApiKey, Scope

TEST_TEMPLATES = Path(__file__).parent / "templates"
# The body of every (non-streamed) response the suite receives (tests/test_secrets.py).
RESPONSES: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secrets check reads what every other test left: it runs last."""
    items.sort(key=lambda item: item.module.__name__ == "tests.test_secrets")  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def _record_responses() -> Iterator[None]:
    send = httpx.AsyncClient.send

    async def recording(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        response = await send(self, request, **kwargs)
        if not kwargs.get("stream"):
            RESPONSES.append(response.text)
        return response

    httpx.AsyncClient.send = recording  # type: ignore[method-assign]
    yield
    httpx.AsyncClient.send = send  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Path]:
    # Reachable by the unprivileged user that PostgreSQL runs as when tests run as root.
    path = Path(tempfile.mkdtemp(prefix="hatchery-tests-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("HATCHERY_KEEP_TEST_DIR"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def git_root(scratch_dir: Path) -> Path:
    """Where adopted file:// repositories may live (HATCHERY_REPOSITORY_FILE_ROOT)."""
    path = scratch_dir / "git"
    path.mkdir()
    return path


@pytest.fixture
def repos(git_root: Path) -> Path:
    """A directory of this test's own under the file:// root, for the repositories it adopts."""
    return Path(tempfile.mkdtemp(dir=git_root))


@pytest.fixture(scope="session")
def postgres(scratch_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(scratch_dir / "postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(scratch_dir: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(scratch_dir / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres: EmbeddedPostgres) -> str:
    url = postgres.url()
    db.upgrade_control_db(url)
    return url


@pytest.fixture(scope="session")
def settings(
    database_url: str, redis_server: EmbeddedRedis, scratch_dir: Path, git_root: Path
) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_server.url,
        repositories_dir=scratch_dir / "repositories",
        backups_dir=scratch_dir / "backups",
        repository_file_root=git_root,
        migrations_dir=scratch_dir / "migrations",
        log_format="console",
        readiness_timeout_seconds=1.0,
        extra_templates_dir=TEST_TEMPLATES,
        # Far above what the suite sends; tests of the limits start apis with low ones.
        rate_limit_per_key="100000/minute",
        rate_limit_per_address="100000/minute",
    )


@pytest.fixture(scope="session")
def service_env(settings: Settings) -> dict[str, str]:
    """The environment a real `hatchery api` or `hatchery worker` process runs with."""
    return {
        **os.environ,
        "HATCHERY_DATABASE_URL": settings.require_database_url(),
        "HATCHERY_REDIS_URL": settings.require_redis_url(),
        "HATCHERY_REPOSITORIES_DIR": str(settings.repositories_dir),
        "HATCHERY_BACKUPS_DIR": str(settings.backups_dir),
        "HATCHERY_REPOSITORY_FILE_ROOT": str(settings.repository_file_root),
        "HATCHERY_MIGRATIONS_DIR": str(settings.migrations_dir),
        "HATCHERY_WORKER_HEARTBEAT_SECONDS": "1",
        "HATCHERY_EXTRA_TEMPLATES_DIR": str(TEST_TEMPLATES),
        "HATCHERY_RUN_HEARTBEAT_SECONDS": "0.5",
        "HATCHERY_RUN_STALE_AFTER_SECONDS": "3",
        "HATCHERY_REAPER_INTERVAL_SECONDS": "1",
        "HATCHERY_LOG_FORMAT": "json",
        "HATCHERY_RATE_LIMIT_PER_KEY": settings.rate_limit_per_key,
        "HATCHERY_RATE_LIMIT_PER_ADDRESS": settings.rate_limit_per_address,
    }


@pytest.fixture(scope="session")
def worker_process(
    service_env: dict[str, str], scratch_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    process = start(["worker"], service_env, scratch_dir / "worker.log")
    yield process
    stop(process)


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    process, port = bench.start_api(env, log)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def live_api(
    service_env: dict[str, str], worker_process: subprocess.Popen[bytes], scratch_dir: Path
) -> Iterator[str]:
    """The URL of a real `hatchery api` process, with a real worker beside it."""
    process, url = start_api(service_env, scratch_dir / "api.log")
    yield url
    stop(process)


@pytest.fixture(scope="session")
async def live_admin_token(engine: AsyncEngine, settings: Settings) -> str:
    async with db.create_sessionmaker(engine)() as session, db.transaction(session):
        _, token = await keys.create_key(
            session, settings.key_hash_key, name="e2e admin", scopes=[Scope.admin]
        )
    return token


@pytest.fixture
async def live(live_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_api, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back after the test."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        yield conn
        await transaction.rollback()


@pytest.fixture(scope="session")
async def jobs(redis_server: EmbeddedRedis) -> AsyncIterator[queue.Queue]:
    client = queue.connect(redis_server.url)
    yield client
    await queue.close(client)


@pytest.fixture
def sessionmaker(
    connection: AsyncConnection, jobs: queue.Queue
) -> async_sessionmaker[AsyncSession]:
    # Commits by the code under test become savepoint releases: the test's outer
    # transaction still rolls everything back.
    return async_sessionmaker(
        bind=connection,
        expire_on_commit=False,
        join_transaction_mode="create_savepoint",
        info={db.JOBS: jobs},
    )


@pytest.fixture
async def session(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@asynccontextmanager
async def serving(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    state: dict[str, Any] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of `app` as uvicorn would serve it: each request given the
    lifespan's state (`state`, or a lifespan run for this client), its sessions from
    `sessionmaker` when given."""
    async with contextlib.AsyncExitStack() as stack:
        if state is None:
            state = await stack.enter_async_context(app.router.lifespan_context(app))
        shared = state

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            await app(scope | {"state": dict(shared)}, receive, send)

        if sessionmaker is not None:
            app.dependency_overrides[db.sessionmaker_of] = lambda: sessionmaker
            stack.callback(app.dependency_overrides.clear)
        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="session")
async def app_state(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The shared app's lifespan, run once for the session."""
    async with app.router.lifespan_context(app) as state:
        yield dict(state)


@pytest.fixture(autouse=True)
async def _clean_redis(redis_server: EmbeddedRedis) -> None:
    client = queue.connect(redis_server.url)
    await client.flushall()
    await queue.close(client)


@pytest.fixture
async def client(
    app: FastAPI, app_state: dict[str, Any], sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app, sessionmaker, app_state) as client:
        yield client


async def make_key(
    session: AsyncSession,
    settings: Settings,
    *scopes: Scope,
    project_id: object = None,
) -> tuple[ApiKey, str]:
    async with db.transaction(session):
        key, token = await keys.create_key(
            session,
            settings.key_hash_key,
            name="test",
            scopes=list(scopes),
            project_id=project_id,  # type: ignore[arg-type]
        )
    return key, token


@pytest.fixture
async def admin_token(session: AsyncSession, settings: Settings) -> str:
    _, token = await make_key(session, settings, Scope.admin)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def isolated_env(service_env: dict[str, str]) -> dict[str, str]:
    # A Redis database of its own: only the workers this test starts see its jobs.
    return {**service_env, "HATCHERY_REDIS_URL": service_env["HATCHERY_REDIS_URL"][:-1] + "1"}


@pytest.fixture
def isolated_api(isolated_env: dict[str, str], scratch_dir: Path) -> Iterator[str]:
    process, url = start_api(isolated_env, scratch_dir / "isolated-api.log")
    yield url
    stop(process)
