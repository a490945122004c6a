"""Processes a project controls (its dependency builds, its migrations) run apart from
Hatchery: as another user when Hatchery runs as root, with a scrubbed environment and a
scratch HOME, resource limits, a wall clock, and their whole process group killed when
they are cancelled, time out or the worker stops."""

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hatchery.config import Settings
from hatchery.failures import Failure

LINE_LIMIT = 1 << 20


class SandboxTimeout(Failure):
    pass


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int
    memory_bytes: int
    file_bytes: int
    wall_seconds: float


@dataclass(frozen=True)
class Sandbox:
    """Who the processes run as (None: as Hatchery, which is not root) and their limits."""

    uid: int | None
    gid: int | None
    limits: Limits

    @classmethod
    def from_settings(cls, settings: Settings, wall_seconds: float) -> "Sandbox":
        limits = Limits(
            cpu_seconds=settings.migration_cpu_seconds,
            memory_bytes=settings.migration_memory_mb << 20,
            file_bytes=settings.migration_file_size_mb << 20,
            wall_seconds=wall_seconds,
        )
        if os.geteuid() != 0:
            return cls(None, None, limits)
        user = pwd.getpwnam(settings.migration_user)
        return cls(user.pw_uid, user.pw_gid, limits)

    def own(self, *paths: Path, recursive: bool = True) -> None:
        """Hand paths (and, unless told otherwise, what is in them) to the sandbox's user."""
        if self.uid is None or self.gid is None:
            return
        for path in paths:
            for place in (path, *(path.rglob("*") if recursive else ())):
                os.lchown(place, self.uid, self.gid)

    def reachable(self, path: Path) -> bool:
        """Whether the sandbox's user can run `path` (every directory above it opens)."""
        if self.uid is None:
            return True
        path = path.resolve()
        for place in (*reversed(path.parents), path):
            mode = place.stat().st_mode
            if not mode & stat.S_IXOTH and place.stat().st_uid != self.uid:
                return False
        return bool(path.stat().st_mode & stat.S_IROTH)

    def environment(self, home: Path, path: list[str], extra: Mapping[str, str]) -> dict[str, str]:
        """Nothing of Hatchery's own environment: no settings, keys or database URLs."""
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.pathsep.join([*path, "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    async def start(
        self, argv: list[str], *, cwd: Path, env: dict[str, str]
    ) -> asyncio.subprocess.Process:
        limits = self.limits
        prlimit = shutil.which("prlimit") or "prlimit"
        command = [
            prlimit, f"--cpu={limits.cpu_seconds}", f"--as={limits.memory_bytes}",
            f"--fsize={limits.file_bytes}", "--core=0", "--", *argv,
        ]  # fmt: skip
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=LINE_LIMIT,
            user=self.uid,
            group=self.gid,
            extra_groups=None if self.uid is None else [],
        )

    async def run(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        on_line: Callable[[str], Awaitable[None]],
    ) -> int:
        """Run to the end, each output line to `on_line`; the exit code."""
        process = await self.start(argv, cwd=cwd, env=env)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        async with self.supervised(process):
            assert process.stderr is not None
            await asyncio.gather(
                _pump(process.stdout, on_line), _pump(process.stderr, on_line), process.wait()
            )
        assert process.returncode is not None
        return process.returncode

    @contextlib.asynccontextmanager
    async def supervised(self, process: asyncio.subprocess.Process) -> AsyncIterator[None]:
        """The body runs under the wall clock; if it ends early for any reason (timeout,
        cancellation, an error), the process and everything it started are killed."""
        try:
            async with asyncio.timeout(self.limits.wall_seconds):
                yield
        except TimeoutError:
            kill(process)
            await process.wait()
            raise SandboxTimeout(
                f"stopped after {self.limits.wall_seconds:g} s (the wall-clock limit)"
            ) from None
        except BaseException:
            kill(process)
            await process.wait()
            raise


def kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line over the limit: take what there is
            raw = await stream.read(LINE_LIMIT)
        if not raw:
            return
        yield raw.decode(errors="replace").rstrip("\n")


async def _pump(stream: asyncio.StreamReader, on_line: Callable[[str], Awaitable[None]]) -> None:
    async for line in lines(stream):
        await on_line(line)
