"""What the benchmarks and the test suite share: embedded servers, a migrated control
database, real `hatchery` processes."""

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hatchery import db
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from hatchery.keys import service as keys
from hatchery.keys.models import Scope


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    scratch: Path
    settings: Settings
    env: dict[str, str]
    admin_token: str


async def _admin_token(settings: Settings) -> str:
    engine = db.create_engine(settings.require_database_url())
    async with db.create_sessionmaker(engine)() as session, db.transaction(session):
        _, token = await keys.create_key(
            session, settings.key_hash_key, name="bench", scopes=[Scope.admin]
        )
    await engine.dispose()
    return token


@contextmanager
def stack(**env: str) -> Iterator[Stack]:
    scratch = Path(tempfile.mkdtemp(prefix="hatchery-bench-"))
    scratch.chmod(0o755)
    postgres, redis = EmbeddedPostgres(scratch / "postgres"), EmbeddedRedis(scratch / "redis")
    postgres.start()
    redis.start()
    try:
        settings = Settings(
            database_url=postgres.url(),
            redis_url=redis.url,
            repositories_dir=scratch / "repositories",
            backups_dir=scratch / "backups",
            migrations_dir=scratch / "migrations",
        )
        db.upgrade_control_db(postgres.url())
        process_env = {
            **os.environ,
            "HATCHERY_DATABASE_URL": postgres.url(),
            "HATCHERY_REDIS_URL": redis.url,
            "HATCHERY_REPOSITORIES_DIR": str(scratch / "repositories"),
            "HATCHERY_BACKUPS_DIR": str(scratch / "backups"),
            "HATCHERY_MIGRATIONS_DIR": str(scratch / "migrations"),
            "HATCHERY_LOG_LEVEL": "WARNING",
            # Counted as in production, but far above what a benchmark sends.
            "HATCHERY_RATE_LIMIT_PER_KEY": "10000000/minute",
            "HATCHERY_RATE_LIMIT_PER_ADDRESS": "10000000/minute",
            "HATCHERY_RATE_LIMIT_STREAMS": "10000000/minute",
            "HATCHERY_RATE_LIMIT_DEPLOYMENTS": "10000000/minute",
            **env,
        }
        yield Stack(
            postgres, redis, scratch, settings, process_env, asyncio.run(_admin_token(settings))
        )
    finally:
        redis.stop()
        postgres.stop()


def start(
    command: list[str], env: dict[str, str], log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A hatchery process; its output goes to `log`, else to a file in
    HATCHERY_BENCH_LOGS (a directory) if set."""
    logs = os.environ.get("HATCHERY_BENCH_LOGS")
    if log is None and logs:
        log = Path(logs) / f"{command[0]}-{time.monotonic_ns()}.log"
    output: int | IO[bytes] = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "hatchery.cli", *command],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    finally:
        if not isinstance(output, int):
            output.close()  # the process has its own copy


def start_api(env: dict[str, str], log: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = start(["api", "--port", str(port)], env, log)
    wait_for_port(port, 30, process)
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Client:
    """HTTP/1.1 keep-alive with nothing else: the figures are the endpoint's, not a client
    library's (httpx adds about a millisecond a request here)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    async def __aenter__(self) -> "Client":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def get(self, url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"GET {url} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.token}\r\n"
            f"{extra}\r\n".encode()
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        status = int(head[0].split()[1])
        fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:] if line)}
        body = await self.reader.readexactly(int(fields.get("content-length", 0)))
        return status, fields, body
