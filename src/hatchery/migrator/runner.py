"""Where a project's migrations run.

Hatchery never imports a project's code into the api or the worker: listing revisions,
the current revision, offline SQL, upgrade, downgrade and stamp each run in a child
process (`child.py`) with the project's own Python and env.py, from the directory of its
alembic.ini. The worker holds Hatchery's guarantees around the child (the migration lock,
the backup, the timeouts it injects, the say before every commit) and turns the child's
JSON lines into progress and records.

`Runner` is the seam: `LocalRunner`, the default, starts the child here in the sandbox.
Another runner could start the same child in the project's own image (README).
"""

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from sqlalchemy.engine import make_url

from hatchery import redaction
from hatchery.config import Settings
from hatchery.failures import Failure
from hatchery.migrator.sandbox import Sandbox, kill, lines
from hatchery.migrator.workspace import Workspace

CHILD = Path(__file__).with_name("child.py")
LOG_TAIL = 40
_PLACEHOLDER = re.compile(r"\{(host|port|user|password|database|url)\}")


@dataclass(frozen=True)
class Site:
    """Where a project's Alembic setup is, and how Hatchery runs it."""

    ini: str  # relative to the repository's root
    section: str = "alembic"
    env_py: bool = True
    version_table: str | None = None
    version_table_schema: str | None = None
    variables: dict[str, str] = field(default_factory=dict)


class ChildFailed(Failure):
    """What the child reported: the exception's type and message, the failing statement
    and revision, the traceback's tail, and the revisions that landed before it."""

    def __init__(self, failure: dict[str, Any]) -> None:
        self.failure = failure
        self.revision: str | None = failure.get("revision")
        self.statement: str | None = failure.get("statement")
        self.landed: list[str] = failure.get("landed", [])
        self.trace: str = failure.get("traceback", "")
        # The project's database server could not be reached, or went away under it.
        self.unreachable: bool = bool(failure.get("unreachable"))
        where = f"revision {self.revision} failed: " if self.revision else ""
        super().__init__(f"{where}{failure.get('type')}: {failure.get('message')}")

    def details(self) -> dict[str, Any]:
        keep = ("type", "message", "statement", "revision", "landed", "traceback")
        return {k: self.failure[k] for k in keep if self.failure.get(k) is not None}


@dataclass
class Hooks:
    """The worker's side of the conversation."""

    on_log: Callable[[str], Awaitable[None]]
    # A revision landed (in the open transaction): go on?
    on_revision: Callable[[dict[str, Any]], Awaitable[bool]] | None = None
    # Everything ran: commit?
    on_commit: Callable[[], Awaitable[bool]] | None = None


class Conversation(Protocol):
    """A running child, and the worker's side of what it says."""

    hooks: Hooks

    async def until(self, *events: str) -> dict[str, Any]: ...

    async def answer(self, **reply: Any) -> None: ...

    async def close(self) -> None: ...


class Runner(Protocol):
    async def start(
        self, python: Path, workspace: Workspace, site: Site, request: dict[str, Any], hooks: Hooks
    ) -> Conversation: ...


async def run(
    runner: Runner,
    python: Path,
    workspace: Workspace,
    site: Site,
    request: dict[str, Any],
    hooks: Hooks,
) -> dict[str, Any]:
    """A child from start to end: its final report."""
    child = await runner.start(python, workspace, site, request, hooks)
    try:
        return await child.until("inspected", "done")
    finally:
        await child.close()


def request(
    command: str, database_url: str, site: Site, settings: Settings, **fields: Any
) -> dict[str, Any]:
    """What a child is asked to do; the database URL travels in it, by pipe."""
    url = make_url(database_url)
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    parts = {
        "host": url.host or "localhost",
        "port": str(url.port or 5432),
        "user": url.username or "",
        "password": url.password or "",
        "database": url.database or "",
        "url": plain,
    }
    variables = {
        name: _PLACEHOLDER.sub(lambda m: parts[m.group(1)], value)
        for name, value in site.variables.items()
    }
    return {
        "command": command,
        "ini": Path(site.ini).name,
        "section": site.section,
        "env_py": site.env_py,
        "version_table": site.version_table,
        "version_table_schema": site.version_table_schema,
        "database_url": plain,
        "variables": variables,
        "lock_timeout_ms": settings.migration_lock_timeout_ms,
        "statement_timeout_ms": settings.migration_statement_timeout_ms,
        "application_name": "hatchery",
        **fields,
    }


def secrets_of(request: dict[str, Any]) -> list[str]:
    url = request["database_url"]
    password = make_url(url).password or ""
    return [url, password, quote(password, safe=""), *request["variables"].values()]


@dataclass(frozen=True)
class LocalRunner:
    """The child, started on this machine in the sandbox."""

    sandbox: Sandbox

    async def start(
        self, python: Path, workspace: Workspace, site: Site, request: dict[str, Any], hooks: Hooks
    ) -> "LocalChild":
        child = workspace.path / "hatchery_child.py"  # beside HOME: the child cannot alter it
        shutil.copyfile(CHILD, child)
        child.chmod(0o644)
        cwd = (workspace.checkout / site.ini).parent
        env = self.sandbox.environment(
            workspace.home, [str(python.parent)], {"VIRTUAL_ENV": str(python.parent.parent)}
        )
        request = {**request, "root": str(workspace.checkout)}
        process = await self.sandbox.start([str(python), str(child)], cwd=cwd, env=env)
        conversation = LocalChild(process, self.sandbox, secrets_of(request), hooks)
        await conversation.send(request)
        return conversation


class LocalChild:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        sandbox: Sandbox,
        secrets: list[str],
        hooks: Hooks,
    ) -> None:
        self.process, self.secrets, self.hooks = process, secrets, hooks
        self.tail: list[str] = []
        self.expired = False
        assert process.stdout and process.stderr
        self.events = lines(process.stdout)
        self.logs = asyncio.create_task(self._logs(lines(process.stderr)))
        self.clock = asyncio.get_running_loop().call_later(
            sandbox.limits.wall_seconds, self._expire
        )
        self.wall_seconds = sandbox.limits.wall_seconds

    def _expire(self) -> None:
        self.expired = True
        kill(self.process)

    async def _logs(self, source: AsyncIterator[str]) -> None:
        async for line in source:
            line = redaction.redact(line, self.secrets)
            self.tail[:] = [*self.tail[-LOG_TAIL:], line]
            await self.hooks.on_log(line)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def answer(self, **reply: Any) -> None:
        await self.send(reply)

    async def until(self, *events: str) -> dict[str, Any]:
        """Read what the child says, answering its questions, until one of `events` (or
        its failure, raised as ChildFailed)."""
        try:
            async for line in self.events:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    await self.hooks.on_log(redaction.redact(line, self.secrets))
                    continue
                kind = event.get("event")
                if kind == "error":
                    raise ChildFailed(self._redacted(event))
                if kind in events:
                    found: dict[str, Any] = event
                    return found
                reply = await _answer(event, self.hooks)
                if reply is not None:
                    await self.answer(**{"continue": reply})
        except BaseException:
            await self.close()
            raise
        await self.close()
        if self.expired:
            raise ChildFailed(
                {
                    "type": "Timeout",
                    "message": f"the migration was stopped after {self.wall_seconds:g} s "
                    "(the wall-clock limit)",
                }
            )
        message = "\n".join(self.tail[-10:]) or f"exit status {self.process.returncode}"
        raise ChildFailed({"type": "ChildExited", "message": message})

    def _redacted(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            k: redaction.redact(v, self.secrets) if isinstance(v, str) else v
            for k, v in event.items()
        }

    async def close(self) -> None:
        """End the child (and everything it started) if it still runs."""
        self.clock.cancel()
        if self.process.returncode is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                kill(self.process)
                await self.process.wait()
        await asyncio.gather(self.logs, return_exceptions=True)


async def _answer(event: dict[str, Any], hooks: Hooks) -> bool | None:
    if event.get("event") == "revision":
        return await hooks.on_revision(event) if hooks.on_revision else True
    if event.get("event") == "commit":
        return await hooks.on_commit() if hooks.on_commit else True
    return None
