import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypedDict

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hatchery import __doc__ as description
from hatchery import db, files, invalidation, plans, queue
from hatchery.config import Settings, get_settings
from hatchery.environments.router import router as environments_router
from hatchery.errors import PROBLEM_MEDIA_TYPE, error_responses, install_error_handlers
from hatchery.events.hub import EventHub
from hatchery.health.router import router as health_router
from hatchery.keys.router import router as keys_router
from hatchery.migrations.router import router as migrations_router
from hatchery.observability import configure_logging
from hatchery.projects.router import router as projects_router
from hatchery.ratelimit import RateLimiter
from hatchery.request_context import REQUEST_ID_HEADER, RequestContextMiddleware
from hatchery.routes import RouteTable
from hatchery.runs.router import router as runs_router
from hatchery.schema.router import router as schema_router
from hatchery.schema.service import SchemaState

API_PREFIX = "/api/v1"


class State(TypedDict):
    """What the api process holds for its lifetime; each request sees it as
    `request.state`, read through the dependencies in `hatchery.deps` (and beside the
    modules that own a part: the rate limiter, the schema engines, the route table)."""

    settings: Settings
    engine: AsyncEngine
    control_head: str | None
    jobs: queue.Queue  # also the process's Redis client
    sessionmaker: async_sessionmaker[AsyncSession]
    caches: invalidation.Caches
    rate_limiter: RateLimiter
    hub: EventHub
    # Set by sse-starlette when uvicorn begins to shut down (see runs/router.py).
    shutting_down: anyio.Event
    schema: SchemaState
    routes: RouteTable


def lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[State]]:
    @asynccontextmanager
    async def running(app: FastAPI) -> AsyncIterator[State]:
        files.make_private(settings.repositories_dir, settings.backups_dir)
        database_url = settings.require_database_url()
        engine = db.create_engine(database_url)
        jobs = queue.connect(settings.require_redis_url())
        caches = invalidation.Caches(settings.memory_cache_seconds)
        hub = EventHub(
            Redis.from_url(
                settings.require_redis_url(), socket_connect_timeout=2, health_check_interval=15
            ),
            tick_seconds=settings.sse_ping_seconds,
            forget=caches.forget,
        )
        shutting_down = anyio.Event()
        hub.start(shutting_down)
        schema = SchemaState()
        tune_garbage_collector()
        try:
            yield State(
                settings=settings,
                engine=engine,
                control_head=db.control_head(database_url),
                jobs=jobs,
                sessionmaker=db.create_sessionmaker(engine, jobs),
                caches=caches,
                rate_limiter=RateLimiter(settings, jobs),
                hub=hub,
                shutting_down=shutting_down,
                schema=schema,
                routes=RouteTable(app),
            )
        finally:
            await schema.engines.dispose()
            await hub.stop()
            await queue.close(jobs)
            await engine.dispose()

    return running


def tune_garbage_collector() -> None:
    """Keep collection pauses off the event streams.

    SSE streams keep objects alive for tens of milliseconds, long enough to be promoted,
    so the default thresholds ran a full collection every few seconds: a 300 ms pause
    with 1,000 clients (bench/sse_fanout.py). Freezing what start-up made and collecting
    the young generation less often keeps p99 under 50 ms; collection stays on.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def _route_name_as_operation_id(route: APIRoute) -> str:
    return route.name


def _problem_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with problem responses under `application/problem+json`,
    the media type they are really sent with (/readyz's 503 stays plain JSON)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path in schema["paths"].values():
        for operation in path.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                if code.isdigit() and int(code) >= 400 and ref.endswith("/Problem"):
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    plans.register()
    configure_logging(settings.log_format, settings.log_level)
    app = FastAPI(
        title="Hatchery",
        version="1",
        description=description or "",
        lifespan=lifespan(settings),
        debug=settings.debug,
        generate_unique_id_function=_route_name_as_operation_id,
    )
    install_error_handlers(app)

    # Every route under the prefix needs a key, and so counts against the rate limits.
    api = APIRouter(prefix=API_PREFIX, responses=error_responses(429, 503))
    api.include_router(projects_router)
    api.include_router(runs_router)
    api.include_router(migrations_router)
    api.include_router(environments_router)
    api.include_router(schema_router)
    api.include_router(keys_router)
    app.include_router(api)
    app.include_router(health_router)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
            expose_headers=[REQUEST_ID_HEADER, "Location", "ETag", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware)
    app.openapi = lambda: _problem_openapi(app)  # type: ignore[method-assign]
    return app
