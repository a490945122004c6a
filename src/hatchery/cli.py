import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import httpx
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db, dev, queue, watch
from hatchery.config import MissingSettingError, Settings
from hatchery.errors import HatcheryError
from hatchery.keys import service as keys
from hatchery.keys.models import ApiKey, Scope
from hatchery.observability import configure_logging
from hatchery.worker.settings import run as run_worker

T = TypeVar("T")

app = typer.Typer(
    help="Hatchery: hatch projects, stream their setup, migrate their databases.",
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The control database.")
keys_app = typer.Typer(help="API keys.")
runs_app = typer.Typer(help="Runs, followed over HTTP.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(runs_app, name="runs")

# For the commands that talk to a running api over HTTP.
ApiUrl = Annotated[str, typer.Option("--url", envvar="HATCHERY_URL", help="The api's base URL.")]
ApiToken = Annotated[
    str,
    typer.Option(
        "--token", envvar="HATCHERY_TOKEN", show_default=False, help="An API key or deploy token."
    ),
]
WaitSeconds = Annotated[float, typer.Option(help="How long to wait for the run, in seconds.")]


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        messages = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        typer.echo(f"hatchery: refusing to start: {messages}", err=True)
        raise typer.Exit(2) from None


def _database_url(settings: Settings) -> str:
    try:
        return settings.require_database_url()
    except MissingSettingError as exc:
        typer.echo(f"hatchery: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Defaults to HATCHERY_API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Defaults to HATCHERY_API_PORT.")] = None,
) -> None:
    """Serve the HTTP API."""
    settings = load_settings()
    _database_url(settings)
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        "hatchery.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )


@app.command()
def worker() -> None:
    """Run a worker that executes queued runs."""
    settings = load_settings()
    _database_url(settings)
    run_worker(settings)


@app.command("dev")
def dev_command(
    port: Annotated[int | None, typer.Option(help="API port; a free one by default.")] = None,
    state_dir: Annotated[Path, typer.Option(help="Where embedded servers keep data.")] = Path(
        ".hatchery"
    ),
) -> None:
    """Run everything locally: embedded PostgreSQL and Redis (unless HATCHERY_DATABASE_URL
    or HATCHERY_REDIS_URL point elsewhere), the API and a worker."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    raise typer.Exit(dev.run(settings, state_dir, port))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the control database's migrations."""
    db.upgrade_control_db(_database_url(load_settings()), revision)


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Revert the control database's migrations to REVISION."""
    db.downgrade_control_db(_database_url(load_settings()), revision)


async def _in_session(settings: Settings, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    engine = db.create_engine(_database_url(settings))
    try:
        async with db.create_sessionmaker(engine)() as session, db.transaction(session):
            return await action(session)
    finally:
        await engine.dispose()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scope: Annotated[list[Scope], typer.Option(help="Repeat for several scopes.")],
    project: Annotated[uuid.UUID | None, typer.Option(help="Bind the key to a project.")] = None,
) -> None:
    """Create a key and print its token (shown once)."""
    settings = load_settings()
    if Scope.admin in scope and project is not None:
        typer.echo("hatchery: an admin key cannot be bound to a project", err=True)
        raise typer.Exit(2)

    async def create(session: AsyncSession) -> tuple[ApiKey, str]:
        return await keys.create_key(
            session, settings.key_hash_key, name=name, scopes=scope, project_id=project
        )

    try:
        key, token = asyncio.run(_in_session(settings, create))
    except HatcheryError as exc:
        typer.echo(f"hatchery: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"id:    {key.id}\nscopes: {' '.join(key.scopes)}\ntoken: {token}")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their tokens)."""
    found = asyncio.run(_in_session(load_settings(), keys.list_keys))
    for key in found:
        state = "revoked" if key.revoked_at else "active"
        bound = f" project={key.project_id}" if key.project_id else ""
        typer.echo(f"{key.id}  {key.prefix}  {state:7}  {','.join(key.scopes)}  {key.name}{bound}")


@keys_app.command("revoke")
def keys_revoke(key_id: uuid.UUID) -> None:
    """Revoke a key."""

    settings = load_settings()

    async def revoke() -> None:
        # Api processes remember keys: they hear of the revocation on Redis.
        redis = queue.connect(settings.require_redis_url())
        try:
            await _in_session(
                settings, lambda session: keys.revoke_key(session, redis, key_id, by=None)
            )
        finally:
            await queue.close(redis)

    try:
        asyncio.run(revoke())
    except HatcheryError as exc:
        typer.echo(f"hatchery: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {key_id}")


@app.command()
def deploy(
    project: Annotated[str, typer.Option(help="The project's slug or id.")],
    env: Annotated[str, typer.Option(help="The environment that was deployed.")],
    commit: Annotated[str, typer.Option(help="The deployed commit (SHA).")],
    deployment_id: Annotated[str, typer.Option(help="CI's id for this deployment.")],
    url: ApiUrl,
    token: ApiToken,
    wait: Annotated[bool, typer.Option(help="Follow the migration run to its end.")] = False,
    timeout: WaitSeconds = 900,
) -> None:
    """Report a deployment from CI; with --wait, follow its migration run. Exit code: 0
    succeeded (or reported, without --wait), 1 failed, 2 timed out, 3 refused."""
    deadline = time.monotonic() + timeout
    with watch.client(url, token) as api:
        try:
            run = watch.deploy(api, project, env, commit, deployment_id, deadline)
        except watch.Refused as exc:
            typer.echo(f"hatchery: deployment refused: {exc}", err=True)
            raise typer.Exit(watch.REFUSED) from None
        except (watch.Transient, httpx.TransportError) as exc:
            typer.echo(f"hatchery: the api did not take the deployment in time: {exc}", err=True)
            raise typer.Exit(watch.TIMED_OUT) from None
        typer.echo(f"run {run['id']}: migrating {env} to {commit}")
        if wait:
            console = Console(soft_wrap=True)
            raise typer.Exit(watch.watch(api, run["id"], console, timeout, deadline))


def _refused(action: str, exc: Exception) -> typer.Exit:
    typer.echo(f"hatchery: {action}: {exc}", err=True)
    if isinstance(exc, watch.Refused):
        return typer.Exit(watch.REFUSED)
    return typer.Exit(watch.TIMED_OUT)


@app.command()
def refresh(
    project: Annotated[str, typer.Option(help="The project's slug or id.")],
    env: Annotated[str, typer.Option(help="The environment to refresh.")],
    source: Annotated[str, typer.Option("--from", help="The environment to copy from.")],
    url: ApiUrl,
    token: ApiToken,
    backup_id: Annotated[
        uuid.UUID | None, typer.Option(help="Copy this backup of the source environment.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the masking plan; copy nothing.")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the refresh run to its end.")] = False,
    timeout: WaitSeconds = 3600,
) -> None:
    """Refresh an environment from another, masked. Exit code: 0 succeeded (or started,
    without --wait), 1 failed, 2 timed out, 3 refused."""
    deadline = time.monotonic() + timeout
    body = {"from": source, "dry_run": dry_run}
    if backup_id is not None:
        body["backup_id"] = str(backup_id)
    with watch.client(url, token) as api:
        try:
            answer = watch.refresh(api, project, env, body, deadline)
        except (watch.Refused, watch.Transient, httpx.TransportError) as exc:
            raise _refused("refresh refused", exc) from None
        if dry_run:
            for column in answer["columns"]:
                typer.echo(
                    f"{column['table']}.{column['column']}  {column['type']}  "
                    f"{column['strategy']}  {column['rows']} rows"
                )
            for problem in answer["problems"]:
                typer.echo(f"problem: {problem}")
            raise typer.Exit(watch.REFUSED if answer["problems"] else watch.SUCCEEDED)
        typer.echo(f"run {answer['id']}: refreshing {env} from {source}")
        if wait:
            console = Console(soft_wrap=True)
            raise typer.Exit(watch.watch(api, answer["id"], console, timeout, deadline))


@app.command()
def windows(
    project: Annotated[str, typer.Option(help="The project's slug or id.")],
    env: Annotated[str, typer.Option(help="The environment.")],
    url: ApiUrl,
    token: ApiToken,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A window, such as 'Sat 02:00-04:00 Europe/Berlin'; repeat for more."
        ),
    ] = None,
    clear: Annotated[bool, typer.Option(help="Remove every window.")] = False,
) -> None:
    """Show an environment's deploy windows, or set them (deploys outside wait for the
    next one). Exit code 3 when refused."""
    specs = [] if clear else set_
    with watch.client(url, token) as api:
        try:
            answer = watch.windows(api, project, env, specs, time.monotonic() + 60)
        except (watch.Refused, watch.Transient, httpx.TransportError) as exc:
            raise _refused("windows refused", exc) from None
    for window in answer["windows"]:
        typer.echo(window["spec"])
    if not answer["windows"]:
        typer.echo("no windows: deploys migrate at once")
    elif answer["open_now"]:
        typer.echo(f"open now, until {answer['closes_at']}")
    else:
        typer.echo(f"next opens {answer['next_open']}")


@runs_app.command("watch")
def runs_watch(
    run_id: uuid.UUID, url: ApiUrl, token: ApiToken, timeout: WaitSeconds = 3600
) -> None:
    """Follow a run to its end. Exit code: 0 succeeded, 1 failed or cancelled, 2 timed
    out, 3 refused."""
    with watch.client(url, token) as api:
        try:
            code = watch.watch(api, str(run_id), Console(soft_wrap=True), timeout)
        except watch.Refused as exc:
            typer.echo(f"hatchery: {exc}", err=True)
            raise typer.Exit(watch.REFUSED) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
