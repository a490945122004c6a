import contextlib

import prometheus_client
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from hatchery import metrics
from hatchery.deps import RedisDep
from hatchery.health import service
from hatchery.health.schemas import Liveness, Readiness
from hatchery.queue import QUEUE_NAME

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Liveness, name="get_liveness", summary="Liveness")
async def healthz() -> Liveness:
    """Answers 200 while the process can serve requests. It checks nothing else."""
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    name="get_readiness",
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "A dependency is not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Checks PostgreSQL, the control migrations, Redis and a worker heartbeat; answers
    503 with every check's state when any of them fails."""
    readiness = await service.check(request.state)
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)


@router.get("/metrics", name="get_metrics", summary="Prometheus metrics", include_in_schema=False)
async def get_metrics(redis: RedisDep) -> Response:
    """This api process's metrics in Prometheus's text format, with the queue's depth."""
    with contextlib.suppress(RedisError, OSError):  # else the last known; /readyz says why
        metrics.QUEUE_DEPTH.set(await redis.zcard(QUEUE_NAME))
    return Response(
        prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST
    )
