"""`hatchery dev`: the whole system on one machine, on embedded servers unless told otherwise."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import structlog
from pydantic import SecretStr

from hatchery import db
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from hatchery.keys import service as keys
from hatchery.keys.models import Scope

log = structlog.get_logger("hatchery.dev")


async def _create_admin_key(settings: Settings) -> str:
    engine = db.create_engine(settings.require_database_url())
    try:
        async with db.create_sessionmaker(engine)() as session, db.transaction(session):
            _, token = await keys.create_key(
                session, settings.key_hash_key, name="dev admin", scopes=[Scope.admin]
            )
    finally:
        await engine.dispose()
    return token


def _spawn(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of their own: Ctrl-C reaches only `hatchery dev`, which stops
    # everything in order (api, worker, then the servers they use).
    return subprocess.Popen(
        [sys.executable, "-m", "hatchery.cli", command],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(settings: Settings, state_dir: Path, port: int | None) -> int:
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    postgres = redis = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        updates: dict[str, object] = {}
        if settings.database_url is None:
            postgres = EmbeddedPostgres(state_dir / "postgres")
            postgres.start()
            updates["database_url"] = SecretStr(postgres.url())
        if settings.redis_url is None:
            redis = EmbeddedRedis(state_dir / "redis")
            redis.start()
            updates["redis_url"] = SecretStr(redis.url)
        updates["api_port"] = port or free_port()
        settings = settings.model_copy(update=updates)
        database_url = settings.require_database_url()
        db.upgrade_control_db(database_url)
        admin_key = asyncio.run(_create_admin_key(settings))
        worker_metrics_port = settings.worker_metrics_port or free_port()

        env = {
            **os.environ,
            "HATCHERY_DATABASE_URL": database_url,
            "HATCHERY_REDIS_URL": settings.require_redis_url(),
            "HATCHERY_API_PORT": str(settings.api_port),
            "HATCHERY_API_HOST": settings.api_host,
            "HATCHERY_REPOSITORIES_DIR": str(state_dir / "repositories"),
            "HATCHERY_BACKUPS_DIR": str(state_dir / "backups"),
            "HATCHERY_WORKER_METRICS_PORT": str(worker_metrics_port),
        }
        children = [_spawn("api", env), _spawn("worker", env)]
        wait_for_port(settings.api_port, 30, children[0])

        url = f"http://{settings.api_host}:{settings.api_port}"
        (state_dir / "dev.env").write_text(f"HATCHERY_URL={url}\nHATCHERY_ADMIN_KEY={admin_key}\n")
        os.chmod(state_dir / "dev.env", 0o600)
        print(f"\nHatchery is running at {url}  (API docs: {url}/docs)", flush=True)
        print(f"Admin key: {admin_key}", flush=True)
        print(
            f"Metrics: {url}/metrics (api), "
            f"http://{settings.worker_metrics_host}:{worker_metrics_port}/metrics (worker)",
            flush=True,
        )
        print(f"Both are in {state_dir / 'dev.env'}. Ctrl-C stops everything.\n", flush=True)

        while not stop.wait(0.5):
            for child in children:
                if child.poll() is not None:
                    log.error("dev_process_exited", args=child.args, code=child.returncode)
                    return 1
        return 0
    finally:
        for child in children:
            _stop(child, settings.shutdown_grace_seconds + 5)
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()
        (state_dir / "dev.env").unlink(missing_ok=True)
