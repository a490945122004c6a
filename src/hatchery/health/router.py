from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hatchery.health import service
from hatchery.health.schemas import Liveness, Readiness

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
    readiness = await service.check(request.app.state)
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)
