"""The only module that knows the job queue is arq.

The rest of Hatchery enqueues "a job by name" and asks "is a worker alive"; arq is
maintenance-only upstream, so this boundary is where a replacement would go.
"""

from datetime import datetime
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import health_check_key_suffix
from arq.jobs import Job, SerializationError
from redis.asyncio import ConnectionPool

from hatchery.failures import Failure

QUEUE_NAME = "hatchery:queue"
HEALTH_KEY = QUEUE_NAME + health_check_key_suffix

Queue = ArqRedis


def serialize(value: Any) -> bytes:
    """Jobs and results as JSON, never pickle: whoever can write to Redis must not be able
    to run code in a worker. What JSON cannot hold (a failed job's exception) is kept as
    its repr."""
    return orjson.dumps(value, default=repr)


def deserialize(data: bytes) -> Any:
    return orjson.loads(data)


def connect(redis_url: str) -> Queue:
    """A client for the queue and for every other Redis use of the process.

    It does not connect until first used, so a process starts even while Redis is down
    and readiness reports it; short timeouts keep a lost Redis from hanging requests.
    """
    pool = ConnectionPool.from_url(
        redis_url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=10,
        max_connections=200,
    )
    return ArqRedis(
        pool, default_queue_name=QUEUE_NAME, job_serializer=serialize, job_deserializer=deserialize
    )


async def close(queue: Queue) -> None:
    await queue.aclose(close_connection_pool=True)


async def enqueue(
    queue: Queue,
    job: str,
    *args: Any,
    job_id: str | None = None,
    not_before: datetime | None = None,
) -> str | None:
    """Enqueue a job (to start no earlier than `not_before`); returns its id, or None when
    a job with that id is already queued."""
    enqueued = await queue.enqueue_job(job, *args, _job_id=job_id, _defer_until=not_before)
    return enqueued.job_id if enqueued else None


class JobFailed(Failure):
    """The job raised: its exception, as the worker recorded it (a repr)."""


async def result(queue: Queue, job_id: str, timeout: float) -> Any:
    """The job's result; TimeoutError when it has none yet after `timeout` seconds,
    JobFailed when it raised."""
    job = Job(job_id, queue, _queue_name=QUEUE_NAME, _deserializer=deserialize)
    try:
        return await job.result(timeout=timeout, poll_delay=0.02)
    except SerializationError as exc:  # a failure kept as JSON (see serialize)
        raise JobFailed(str(exc)) from None


async def worker_alive(queue: Queue) -> bool:
    """True when some worker has written its heartbeat within its interval."""
    return bool(await queue.exists(HEALTH_KEY))
