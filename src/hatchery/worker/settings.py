import asyncio
import signal
from typing import Any

from arq import cron, func
from arq.connections import RedisSettings
from arq.worker import create_worker
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from hatchery import db, files, metrics, plans
from hatchery.config import Settings, get_settings
from hatchery.migrations.service import DRY_RUN_JOB, INSPECT_JOB
from hatchery.migrator import workspace
from hatchery.observability import configure_logging
from hatchery.queue import HEALTH_KEY, QUEUE_NAME, deserialize, serialize
from hatchery.runs.jobs import EXECUTE_JOB
from hatchery.worker import jobs


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    ctx["settings"] = settings
    files.make_private(settings.repositories_dir, settings.backups_dir)
    files.undumpable()
    plans.register()
    workspace.prepare(settings)
    ctx.setdefault("stopping", asyncio.Event())  # set on SIGTERM by `hatchery worker`
    ctx["engine"] = db.create_engine(settings.require_database_url())
    ctx["sessionmaker"] = db.create_sessionmaker(ctx["engine"], ctx["redis"])


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["engine"].dispose()


async def job_started(ctx: dict[str, Any]) -> None:
    metrics.job_picked_up(ctx["score"])  # the time the job became due, in ms


class WorkerSettings:
    """Defaults for `arq hatchery.worker.settings.WorkerSettings`; `hatchery worker` overrides
    them from Settings."""

    functions = [
        # A try is spent by each shutdown that cuts a run short (it runs again).
        func(jobs.execute_run, name=EXECUTE_JOB, max_tries=5),
        func(jobs.ping, timeout=10, max_tries=1),
        # What the api asks a worker to read with a child: a commit's history, a dry run.
        func(jobs.inspect_history, name=INSPECT_JOB, max_tries=1),
        func(jobs.dry_run, name=DRY_RUN_JOB, max_tries=1),
    ]
    queue_name = QUEUE_NAME
    health_check_key = HEALTH_KEY
    job_serializer = staticmethod(serialize)
    job_deserializer = staticmethod(deserialize)
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = job_started
    # arq's 0.5 s default adds ~250 ms to every pickup; 20 ms adds ~10 ms, for about 1%
    # of a core while idle (50 cheap ZRANGEBYSCORE calls a second; bench/queue_latency.py).
    poll_delay = 0.02
    health_check_interval = 5
    job_timeout = 600
    max_tries = 3
    keep_result = 3600


def redis_settings(settings: Settings) -> RedisSettings:
    redis = RedisSettings.from_dsn(settings.require_redis_url())
    # arq crashes on the first Redis error (python-arq/arq#386, #435, #498); retrying
    # every command forever instead lets a worker ride out a Redis restart and carry on.
    redis.retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=-1)
    redis.retry_on_error = [ConnectionError, TimeoutError, OSError]
    redis.conn_retries = 1_000_000
    return redis


def worker_options(settings: Settings) -> dict[str, Any]:
    return {
        "redis_settings": redis_settings(settings),
        "poll_delay": settings.worker_poll_delay,
        "health_check_interval": settings.worker_heartbeat_seconds,
        "job_timeout": settings.job_timeout_seconds,
        "max_tries": settings.job_max_tries,
        "max_jobs": settings.worker_max_jobs,
        "ctx": {"settings": settings, "stopping": asyncio.Event()},
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
        "cron_jobs": [
            cron(
                jobs.reap_runs,
                second=set(range(0, 60, settings.reaper_interval_seconds)),
                run_at_startup=True,
                timeout=60,
                max_tries=1,
            ),
            cron(
                jobs.start_scheduled_refreshes,
                second=set(range(0, 60, settings.refresh_schedule_check_seconds)),
                timeout=60,
                max_tries=1,
            ),
        ],
    }


def run(settings: Settings) -> None:
    configure_logging(settings.log_format, settings.log_level)
    if settings.worker_metrics_port is not None:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host)
    worker = create_worker(WorkerSettings, **worker_options(settings))  # type: ignore[arg-type]
    # On SIGTERM or SIGINT arq stops taking jobs and gives running ones
    # HATCHERY_WORKER_SHUTDOWN_GRACE_SECONDS before cancelling them; the flag tells a
    # cancelled run that it was cut short by shutdown (and not by its timeout).
    stopping: asyncio.Event = worker.ctx["stopping"]

    def stop(signum: signal.Signals) -> None:
        stopping.set()
        worker.handle_sig_wait_for_completion(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        worker.loop.add_signal_handler(signum, stop, signum)
    worker.run()
