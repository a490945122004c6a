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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from sqlalchemy.engine import make_url

from hatchery import redaction
from hatchery.config import Settings
from hatchery.migrations.sandbox import Sandbox, SandboxTimeout, lines
from hatchery.migrations.workspace import Workspace

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


class ChildFailed(RuntimeError):
    """What the child reported: the exception's type and message, the failing statement
    and revision, the traceback's tail, and the revisions that landed before it."""

    def __init__(self, failure: dict[str, Any]) -> None:
        self.failure = failure
        self.revision: str | None = failure.get("revision")
        self.statement: str | None = failure.get("statement")
        self.landed: list[str] = failure.get("landed", [])
        self.trace: str = failure.get("traceback", "")
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


class Runner(Protocol):
    async def run(
        self, python: Path, workspace: Workspace, site: Site, request: dict[str, Any], hooks: Hooks
    ) -> dict[str, Any]: ...


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

    async def run(
        self, python: Path, workspace: Workspace, site: Site, request: dict[str, Any], hooks: Hooks
    ) -> dict[str, Any]:
        child = workspace.path / "hatchery_child.py"  # beside HOME: the child cannot alter it
        shutil.copyfile(CHILD, child)
        child.chmod(0o644)
        cwd = (workspace.checkout / site.ini).parent
        env = self.sandbox.environment(
            workspace.home, [str(python.parent)], {"VIRTUAL_ENV": str(python.parent.parent)}
        )
        request = {**request, "root": str(workspace.checkout)}
        secrets = secrets_of(request)
        tail: list[str] = []

        async def log(line: str) -> None:
            line = redaction.redact(line, secrets)
            tail[:] = [*tail[-LOG_TAIL:], line]
            await hooks.on_log(line)

        process = await self.sandbox.start([str(python), str(child)], cwd=cwd, env=env)
        assert process.stdin and process.stdout and process.stderr
        process.stdin.write(json.dumps(request).encode() + b"\n")
        await process.stdin.drain()
        outcome: dict[str, Any] | None = None
        try:
            async with self.sandbox.supervised(process):
                logs = asyncio.create_task(_each(lines(process.stderr), log))
                async for line in lines(process.stdout):
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        await log(line)
                        continue
                    reply = await _answer(event, hooks)
                    if reply is not None:
                        process.stdin.write(json.dumps({"continue": reply}).encode() + b"\n")
                        await process.stdin.drain()
                    elif event.get("event") in ("inspected", "done", "error"):
                        outcome = event
                await process.wait()
                await logs
        except SandboxTimeout as exc:
            raise ChildFailed({"type": "Timeout", "message": f"the migration was {exc}"}) from None
        if outcome is None:
            message = "\n".join(tail[-10:]) or f"exit status {process.returncode}"
            raise ChildFailed({"type": "ChildExited", "message": message})
        if outcome["event"] == "error":
            outcome = {
                k: redaction.redact(v, secrets) if isinstance(v, str) else v
                for k, v in outcome.items()
            }
            raise ChildFailed(outcome)
        return outcome


async def _answer(event: dict[str, Any], hooks: Hooks) -> bool | None:
    if event.get("event") == "revision":
        return await hooks.on_revision(event) if hooks.on_revision else True
    if event.get("event") == "commit":
        return await hooks.on_commit() if hooks.on_commit else True
    return None


async def _each(source: Any, action: Callable[[str], Awaitable[None]]) -> None:
    async for item in source:
        await action(item)
