"""One Alembic command for Hatchery, run inside a project's own environment.

Hatchery's worker starts this file with the project's Python (its own virtualenv), from
the directory of the project's alembic.ini, as an unprivileged user with a scrubbed
environment. It imports nothing of Hatchery's: only the standard library and what the
project installed (Alembic, SQLAlchemy, a driver), so it must stay a single file.

Protocol: one JSON request line on stdin, the database URL in it (never in argv); JSON
lines on stdout, the project's own output going to stderr; after each `revision` event
(and before the final commit) one JSON reply on stdin: `{"continue": true}` or false to
roll back. If stdin closes (the worker died), this process kills itself.
"""

import ast
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import queue
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from urllib.parse import unquote, urlsplit

TRACE_LIMIT = 4000
ASYNC_HINTS = ("async_engine_from_config", "create_async_engine", "AsyncEngine", "run_sync")


class TakenAway(Exception):
    """The worker answered that the run is no longer this child's to commit."""


class Refused(Exception):
    """The project's configuration points outside its repository, or lacks something."""


class Channel:
    """JSON lines to the worker, and its replies."""

    def __init__(self) -> None:
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)  # the project's prints now go to stderr, never into the protocol
        self.replies: queue.Queue[dict] = queue.Queue()
        self.request = json.loads(sys.stdin.readline())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self.replies.put(json.loads(line))
        os.kill(os.getpid(), signal.SIGKILL)  # the worker is gone: so is this migration

    def send(self, event: str, **fields: object) -> None:
        self.out.write(json.dumps({"event": event, **fields}, default=str) + "\n")

    def ask(self, event: str, **fields: object) -> dict:
        """Send an event and wait for the worker's answer (`continue`, and what else)."""
        self.send(event, **fields)
        return self.replies.get()


def die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not Linux: stdin closing will do
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# Revision files, read without running them.


def normalized_sha256(path: Path) -> str:
    """The file's hash, blind to line endings and trailing whitespace."""
    lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
    return hashlib.sha256("\n".join(x.rstrip() for x in lines).strip("\n").encode()).hexdigest()


def downgradable(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "downgrade":
            body = [
                s
                for s in node.body
                if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                and not isinstance(s, ast.Pass)
            ]
            raises = any(
                isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s) for s in body
            )
            return bool(body) and not raises
    return False


def transactional(tree: ast.Module) -> bool:
    """False when the revision commits part of itself (`autocommit_block()`)."""
    return not any(
        isinstance(node, ast.Attribute) and node.attr == "autocommit_block"
        for node in ast.walk(tree)
    )


# The database.


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def driver_url(plain: str, configured: str | None, env_py: str, sync_only: bool) -> str:
    """The URL with the driver this project uses: its alembic.ini's if it names one, else
    an async driver for an async env.py, else a sync one that is installed."""
    if configured and configured.startswith("postgresql+") and "://" in configured:
        driver = configured.split("://", 1)[0]
    elif not sync_only and any(hint in env_py for hint in ASYNC_HINTS):
        driver = next(
            (d for m, d in (("asyncpg", "postgresql+asyncpg"), ("psycopg", "postgresql+psycopg"))
             if installed(m)),
            "postgresql+asyncpg",
        )  # fmt: skip
    else:
        candidates = [("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg")]
        if not sync_only:
            candidates.append(("asyncpg", "postgresql+asyncpg"))
        driver = next((d for m, d in candidates if installed(m)), "postgresql+asyncpg")
    return driver + "://" + plain.split("://", 1)[1]


def expose_database(plain: str, url: str, variables: dict[str, str]) -> None:
    """What env.py files read their database from: DATABASE_URL, libpq's PG* variables,
    and whatever the project declared (templated by the worker)."""
    parts = urlsplit(plain)
    os.environ.update(
        {
            "DATABASE_URL": url,
            "PGHOST": parts.hostname or "localhost",
            "PGPORT": str(parts.port or 5432),
            "PGUSER": unquote(parts.username or ""),
            "PGPASSWORD": unquote(parts.password or ""),
            "PGDATABASE": parts.path.lstrip("/"),
        }
    )
    os.environ.update(variables)


def guard_connections(request: dict) -> None:
    """Every connection the child opens, whoever opens it (env.py, a revision, Alembic),
    gets Hatchery's timeouts and name, and is ended by the server if this process dies."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    settings = [
        ("lock_timeout", str(request["lock_timeout_ms"])),
        ("statement_timeout", str(request["statement_timeout_ms"])),
        ("application_name", request["application_name"]),
    ]

    @event.listens_for(Engine, "connect")
    def _guard(dbapi_connection: object, record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        for name, value in settings:
            cursor.execute(f"SELECT set_config('{name}', '{value}', false)")
        cursor.execute(
            "SELECT set_config('client_connection_check_interval', '1000', false) "
            "WHERE current_setting('server_version_num')::int >= 140000"
        )
        cursor.close()
        # A SET inside a transaction rolled back later would be undone: commit it now.
        dbapi_connection.commit()  # type: ignore[attr-defined]


# Alembic.


class Project:
    def __init__(self, request: dict, channel: Channel) -> None:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        self.request = request
        self.channel = channel
        self.root = Path(request["root"]).resolve()
        ini = Path(request["ini"]).resolve()
        kwargs: dict = {"ini_section": request["section"]}
        if Path("pyproject.toml").exists() and "toml_file" in Config.__init__.__code__.co_varnames:
            kwargs["toml_file"] = "pyproject.toml"
        self.config = Config(str(ini), **kwargs)
        if not self.config.get_section(request["section"]):
            raise Refused(f"{ini.name} has no [{request['section']}] section")
        self.check_inside("prepend_sys_path", self.config.get_main_option("prepend_sys_path"))
        self.script = ScriptDirectory.from_config(self.config)
        self.check_inside("script_location", self.script.dir)
        self.env_py = Path(self.script.dir, "env.py")
        configured = self.config.get_main_option("sqlalchemy.url")
        self.plain = request["database_url"]
        env_text = self.env_py.read_text() if self.env_py.exists() else ""
        self.url = driver_url(self.plain, configured, env_text, not request["env_py"])
        self.config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        self.config.attributes["sqlalchemy.url"] = self.url
        self.config.attributes["connection"] = None
        expose_database(self.plain, self.url, request.get("variables", {}))
        if not request["env_py"]:
            self.use_hatchery_env()
        self.context: dict = {}
        self.install_hooks()

    def check_inside(self, option: str, value: str | None) -> None:
        for part in re.split(r"[\s,;:]+", value or ""):
            if part and not Path(part).resolve().is_relative_to(self.root):
                raise Refused(
                    f"{option} resolves to {Path(part).resolve()}, outside the repository"
                )

    def revisions(self) -> list[dict]:
        found = []
        for script in reversed(list(self.script.walk_revisions())):
            path = Path(script.path).resolve()
            if not path.is_relative_to(self.root):
                raise Refused(f"revision {script.revision} is at {path}, outside the repository")
            tree = ast.parse(path.read_text(encoding="utf-8"))
            down = script.down_revision
            found.append(
                {
                    "revision": script.revision,
                    "down_revisions": [down] if isinstance(down, str) else list(down or ()),
                    "message": (script.doc or "").strip(),
                    "path": str(path.relative_to(self.root)),
                    "sha256": normalized_sha256(path),
                    "downgradable": downgradable(tree),
                    "transactional": transactional(tree),
                }
            )
        return found

    def use_hatchery_env(self) -> None:
        """Run Alembic without the project's env.py: its version table, our connection."""
        from alembic.script import ScriptDirectory

        request = self.request
        url = self.url

        def run_env(script: object) -> None:
            from alembic import context

            options = {
                "version_table": request.get("version_table") or "alembic_version",
                "version_table_schema": request.get("version_table_schema"),
            }
            if context.is_offline_mode():
                context.configure(
                    url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **options
                )
                with context.begin_transaction():
                    context.run_migrations()
                return

            def run(connection: object) -> None:
                context.configure(connection=connection, **options)
                with context.begin_transaction():
                    context.run_migrations()

            if url.startswith("postgresql+asyncpg"):
                import asyncio

                from sqlalchemy.ext.asyncio import create_async_engine

                async def main() -> None:
                    engine = create_async_engine(url)
                    async with engine.connect() as connection:
                        await connection.run_sync(run)
                    await engine.dispose()

                asyncio.run(main())
            else:
                from sqlalchemy import create_engine
                from sqlalchemy.pool import NullPool

                engine = create_engine(url, poolclass=NullPool)
                with engine.connect() as connection:
                    run(connection)
                engine.dispose()

        ScriptDirectory.run_env = run_env  # type: ignore[method-assign]

    def install_hooks(self) -> None:
        """Per-revision progress, the worker's say before every commit, and one transaction
        for the whole run unless a revision commits part of itself."""
        from alembic.runtime.environment import EnvironmentContext

        project = self
        original_configure = EnvironmentContext.configure
        original_run = EnvironmentContext.run_migrations

        def configure(self: EnvironmentContext, *args: object, **kwargs: object) -> None:
            if self.is_offline_mode() or not project.context.get("migrating"):
                original_configure(self, *args, **kwargs)
                project.note_version_table(self)
                return
            user_callback = kwargs.get("on_version_apply")
            kwargs["on_version_apply"] = project.landed_hook(user_callback)
            original_configure(self, *args, **kwargs)
            project.note_version_table(self)
            project.plan(project.heads_of(self.get_context()))
            wanted = project.context["per_migration"]
            if kwargs.get("transaction_per_migration", False) != wanted:
                # Configured again, now that the plan says which it must be.
                kwargs["transaction_per_migration"] = wanted
                original_configure(self, *args, **kwargs)

        def run_migrations(self: EnvironmentContext, **kwargs: object) -> None:
            original_run(self, **kwargs)
            final = project.context.get("migrating") and not project.context["per_migration"]
            if final and not self.is_offline_mode() and not project.may_commit():
                raise TakenAway("the run is no longer this worker's: rolled back")

        EnvironmentContext.configure = configure  # type: ignore[method-assign]
        EnvironmentContext.run_migrations = run_migrations  # type: ignore[method-assign]

    def may_commit(self) -> bool:
        return bool(self.channel.ask("commit").get("continue"))

    def note_version_table(self, environment: object) -> None:
        context = environment.get_context()  # type: ignore[attr-defined]
        table = getattr(context, "version_table", "alembic_version")
        schema = getattr(context, "version_table_schema", None)
        self.context["version_table"] = f"{schema}.{table}" if schema else table

    def heads_of(self, context: object) -> tuple:
        """The database's revision, read without leaving a transaction open: Alembic must
        begin the run's own, or autocommit_block() asserts."""
        connection = context.connection  # type: ignore[attr-defined]
        was_open = connection is not None and connection.in_transaction()
        heads = context.get_current_heads()  # type: ignore[attr-defined]
        if connection is not None and not was_open and connection.in_transaction():
            connection.rollback()
        return heads

    def plan(self, current: tuple) -> None:
        target = self.request["target"]
        if self.request["command"] == "stamp":
            steps = [target]
        elif self.request["command"] == "downgrade":
            steps = [s.revision for s in self.script.iterate_revisions(current or "base", target)]
            steps = [s for s in steps if s not in (None, "base")]
        else:
            lower = current or "base"
            steps = [s.revision for s in self.script.iterate_revisions(target, lower)][::-1]
        self.context["path"] = steps
        self.context["landed"] = []
        self.context["mark"] = time.time()
        files = self.context.setdefault("files", {r["revision"]: r for r in self.revisions()})
        if self.context.get("per_migration") is None:
            # One transaction for the whole run, unless a revision commits part of itself.
            self.context["per_migration"] = any(
                not files[s]["transactional"] for s in steps if s in files
            )

    def landed_hook(self, user_callback: object) -> object:
        def landed(ctx: object, step: object, heads: object, run_args: object) -> None:
            if callable(user_callback):
                user_callback(ctx=ctx, step=step, heads=heads, run_args=run_args)
            # Upgrades land it, downgrades revert it: the newer end of the step either way.
            revision = step.up_revision_id  # type: ignore[attr-defined]
            now = time.time()
            landed_list = self.context["landed"]
            landed_list.append(revision)
            started, self.context["mark"] = self.context["mark"], now
            if not self.channel.ask(
                "revision",
                revision=revision,
                index=len(landed_list),
                total=len(self.context["path"]),
                started_at=started,
                duration_ms=round((now - started) * 1000),
                sha256=self.context["files"].get(revision, {}).get("sha256"),
            )["continue"]:
                raise TakenAway("the run is no longer this worker's: rolled back")

        return landed

    def current(self) -> list[str]:
        """The database's revision, read from the version table env.py configures."""
        from alembic.runtime.environment import EnvironmentContext

        heads: list[str] = []

        def read(rev: object, context: object) -> list:
            heads.extend(context.get_current_heads())  # type: ignore[attr-defined]
            return []

        with EnvironmentContext(self.config, self.script, fn=read, dont_mutate=True):
            self.script.run_env()
        return heads

    def steps(self, start: str | None, target: str, downgrade: bool) -> list[str]:
        """The revisions between `start` and `target` ([] when there is nothing to do, or
        no such path: the worker says why)."""
        try:
            if downgrade:
                found = self.script.iterate_revisions(start or "base", target)
            else:
                found = self.script.iterate_revisions(target, start or "base")
            return [s.revision for s in found if s is not None]
        except Exception:
            return []

    def offline_sql(self, start: str | None, target: str, downgrade: bool) -> dict:
        """The same text as `alembic upgrade --sql` (or downgrade); when a revision cannot
        be rendered offline, the others still are, and it is named."""
        from alembic import command

        def render(lower: str | None, upper: str) -> str:
            buffer = io.StringIO()
            self.config.output_buffer = buffer
            if downgrade:
                command.downgrade(self.config, f"{lower}:{upper}", sql=True)
            else:
                command.upgrade(self.config, f"{lower}:{upper}" if lower else upper, sql=True)
            return buffer.getvalue()

        with contextlib.suppress(Exception):  # then revision by revision, below
            return {"sql": render(start, target), "unrendered": []}
        if downgrade:
            steps = [s.revision for s in self.script.iterate_revisions(start, target)]
            pairs = [(a, b) for a, b in zip(steps, [*steps[1:], target], strict=True)]
        else:
            steps = [s.revision for s in self.script.iterate_revisions(target, start or "base")]
            steps = steps[::-1]
            pairs = list(zip([start, *steps[:-1]], steps, strict=True))
        parts, unrendered = [], []
        for lower, upper in pairs:
            name = lower if downgrade else upper
            try:
                parts.append(render(lower, upper))
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}".strip()
                unrendered.append({"revision": name, "error": message[:1000]})
                parts.append(f"-- revision {name} cannot be rendered offline: {message[:300]}\n")
        return {"sql": "".join(parts), "unrendered": unrendered}


def report(project: Project, request: dict) -> dict:
    """Revisions and heads; the database's current revision, if asked; offline SQL from
    there to the target, if asked (best effort)."""
    revisions = project.revisions()
    found: dict = {"heads": list(project.script.get_heads()), "revisions": revisions}
    if request.get("current"):
        found["current"] = project.current()
    if request.get("sql") and request.get("target"):
        current = found.get("current") or []
        start = request.get("start") or (current[0] if current else None)
        downgrade = request.get("direction", request["command"]) == "downgrade"
        found.update(sql="", unrendered=[])
        if project.steps(start, request["target"], downgrade):
            found.update(project.offline_sql(start, request["target"], downgrade))
    found["version_table"] = project.context.get("version_table")
    return found


def inspect(project: Project, request: dict, channel: Channel) -> None:
    channel.send("inspected", **report(project, request))


def migrate(project: Project, request: dict, channel: Channel) -> None:
    """Upgrade, downgrade or stamp. With `plan`, report first (as `inspect` would) and
    wait: the worker checks the plan and takes its backup, then says go (with the target
    and whether to commit revision by revision), or stop."""
    from alembic import command

    if request.get("plan"):
        answer = channel.ask("planned", **report(project, request))
        if not answer.get("continue"):
            channel.send("done", landed=[], version_table=None, duration_ms=0, stopped=True)
            return
        request = {**request, **{k: answer[k] for k in ("target", "per_migration") if k in answer}}
    # Every revision file inside the repository, before anything runs.
    project.context["files"] = {r["revision"]: r for r in project.revisions()}
    project.context.update(migrating=True, per_migration=request.get("per_migration"))
    started = time.time()
    if request["command"] == "upgrade":
        command.upgrade(project.config, request["target"])
    elif request["command"] == "downgrade":
        command.downgrade(project.config, request["target"])
    else:
        command.stamp(project.config, request["target"])
    channel.send(
        "done",
        landed=project.context.get("landed", []),
        version_table=project.context.get("version_table"),
        duration_ms=round((time.time() - started) * 1000),
    )


def describe(exc: BaseException) -> dict:
    """Type, message and the failing statement; never an empty message."""
    statement = getattr(exc, "statement", None)
    original = getattr(exc, "orig", None)
    message = str(original if original is not None else exc).strip()
    return {
        "type": type(original if original is not None else exc).__name__,
        "message": message or repr(exc),
        "statement": str(statement)[:4000] if statement else None,
        "traceback": traceback.format_exc()[-TRACE_LIMIT:],
        "unreachable": unreachable(exc),
    }


def unreachable(exc: BaseException) -> bool:
    """Whether the database server could not be reached or went away: refused, closed,
    shutting down (any driver), not that it refused a statement."""
    if getattr(exc, "connection_invalidated", False):  # SQLAlchemy's dialect says: lost
        return True
    original = getattr(exc, "orig", None) or exc
    sqlstate = str(getattr(original, "pgcode", None) or getattr(original, "sqlstate", None) or "")
    if sqlstate.startswith(("08", "57P01", "57P02", "57P03")):
        return True
    # A driver's OperationalError without a SQLSTATE never reached a server that answered.
    no_answer = type(original).__name__ == "OperationalError" and not sqlstate
    return no_answer or isinstance(original, ConnectionError | TimeoutError)


def main() -> int:
    die_with_parent()
    channel = Channel()
    request = channel.request
    sys.path.insert(0, os.getcwd())  # as `python -m alembic` run from the ini's directory
    project = None
    try:
        if not installed("alembic") or not installed("sqlalchemy"):
            raise Refused("the project's Python dependencies do not include alembic")
        guard_connections(request)
        project = Project(request, channel)
        if request["command"] == "inspect":
            inspect(project, request, channel)
        else:
            migrate(project, request, channel)
        return 0
    except BaseException as exc:
        failure = describe(exc)
        context = project.context if project is not None else {}
        path, landed = context.get("path", []), context.get("landed", [])
        failure["revision"] = path[len(landed)] if len(landed) < len(path) else None
        failure["landed"] = landed
        failure["refused"] = isinstance(exc, Refused)
        channel.send("error", **failure)
        return 1


if __name__ == "__main__":
    sys.exit(main())
