"""Throwaway PostgreSQL and Redis servers on free local ports: the embedded default of
`hatchery dev`, and what the test suite runs on."""

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hatchery.pgtools import pg_binary

# PostgreSQL refuses to run as root; as root, the cluster runs as this system user.
PG_SYSTEM_USER = "postgres"
SUPERUSER = "hatchery"


class EmbeddedServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise EmbeddedServerError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedServerError(f"nothing listened on port {port} within {timeout} s")


def _run_as_db_user() -> list[str]:
    return ["runuser", "-u", PG_SYSTEM_USER, "--"] if os.geteuid() == 0 else []


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def url(self, database: str = "hatchery", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        password_file = self.data_dir.parent / f".{self.data_dir.name}.pw"
        password_file.write_text(self.password)
        if os.geteuid() == 0:
            # The cluster's user must reach its data directory: traverse, never list.
            parent = self.data_dir.parent
            parent.chmod(parent.stat().st_mode | 0o011)
            user = pwd.getpwnam(PG_SYSTEM_USER)
            for path in (self.data_dir, password_file):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.log_file.touch()
            os.chown(self.log_file, user.pw_uid, user.pw_gid)
        try:
            self._db_command(
                pg_binary("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--encoding=UTF8",
                "--locale=C",
            )
        finally:
            password_file.unlink()
        options = self._options()
        self._db_command(
            pg_binary("pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
        )
        self.psql("postgres", "CREATE DATABASE hatchery")

    def psql(self, database: str, sql: str) -> str:
        """Run SQL (read from standard input, so it may be long) and return the output."""
        command = [pg_binary("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]
        result = subprocess.run(
            [*command, "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"],
            input=sql,
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def restart(self, downtime: float = 0.0) -> None:
        """Stop the server and start it again on the same data and port."""
        self.stop()
        time.sleep(downtime)
        self._db_command(
            pg_binary("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data_dir),
            "-l", str(self.log_file), "-o", self._options(),
        )  # fmt: skip

    def _options(self) -> str:
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )

    def postmaster_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    def stop(self) -> None:
        if self.postmaster_pid() is None:
            return
        self._db_command(pg_binary("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data_dir))

    def _db_command(self, *args: str) -> None:
        result = subprocess.run(
            [*_run_as_db_user(), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"{Path(args[0]).name} failed: {result.stderr.strip()}")


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = field(default_factory=free_port)
    # Even on loopback: any local user could otherwise write to the queue.
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedServerError(
                "redis-server was not found; `make dev` installs it (apt-get install redis-server)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(self.data_dir / "redis.log"),
                "--requirepass",
                self.password,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, 10, self.process)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
