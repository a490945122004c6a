"""Who is calling: the bearer token, checked on every route but the public ones."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hatchery.db import SessionDep
from hatchery.deps import CachesDep, RedisDep, SettingsDep
from hatchery.errors import Forbidden, Unauthorized
from hatchery.keys import service, tickets
from hatchery.keys.models import ApiKey, Scope

# What CI's deploy token reads besides deploying: its project, its runs and their events.
READ_OR_DEPLOY = (Scope.projects_read, Scope.deploy)
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer hat_...`")


async def authenticated_key(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caches: CachesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    async def by_token() -> ApiKey:
        if credentials is None:
            raise Unauthorized("Missing bearer token")
        return await service.authenticate(
            session, settings.key_hash_key, credentials.credentials, caches
        )

    return await _identified(request, by_token)


async def _identified(request: Request, find: Callable[[], Awaitable[ApiKey]]) -> ApiKey:
    """The caller's key, found by `find`, counted against the rate limits: one Redis
    round trip for both (and none to find a key this process has verified lately)."""
    limiter = request.state.rate_limiter  # hatchery.ratelimit's, which imports this module
    address = request.client.host if request.client else "unknown"
    try:
        key = await find()
    except Unauthorized:
        await limiter.request(address, None)  # refused requests count too
        raise
    await limiter.request(address, str(key.id))
    structlog.contextvars.bind_contextvars(key_id=str(key.id))
    return key


CurrentKey = Annotated[ApiKey, Depends(authenticated_key)]


def require(*scopes: Scope) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    """A key with any one of `scopes` (admin has them all)."""

    async def check(key: CurrentKey) -> ApiKey:
        return _with_scope(key, scopes)

    return check


def _with_scope(key: ApiKey, scopes: tuple[Scope, ...]) -> ApiKey:
    if not any(key.allows(scope) for scope in scopes):
        wanted = "' or '".join(scopes)
        raise Forbidden(f"This key lacks the '{wanted}' scope")
    return key


async def stream_reader(
    request: Request,
    run_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    caches: CachesDep,
    redis: RedisDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ticket: Annotated[
        str | None,
        Query(
            max_length=100,
            description="A stream ticket (POST .../events/tickets), for clients such as "
            "EventSource that cannot send an Authorization header.",
        ),
    ] = None,
) -> ApiKey:
    """Who follows a run's events: the bearer token, or a ticket for this run."""
    if ticket is None:
        key = await authenticated_key(request, session, settings, caches, credentials)
    else:

        async def by_ticket() -> ApiKey:
            key_id = await tickets.redeem(redis, ticket, run_id)
            if key_id is None:
                raise Unauthorized("Unknown or expired stream ticket")
            return await service.active_key(session, key_id)

        key = await _identified(request, by_ticket)
    return _with_scope(key, READ_OR_DEPLOY)


def check_project(key: ApiKey, project_id: uuid.UUID) -> None:
    if not key.allows_project(project_id):
        raise Forbidden("This key is bound to another project")


def check_unbound(key: ApiKey) -> None:
    if key.project_id is not None:
        raise Forbidden("A key bound to a project cannot act outside it")


AdminKey = Annotated[ApiKey, Depends(require(Scope.admin))]
ProjectsReader = Annotated[ApiKey, Depends(require(Scope.projects_read))]
ProjectsWriter = Annotated[ApiKey, Depends(require(Scope.projects_write))]
ReaderOrDeployer = Annotated[ApiKey, Depends(require(*READ_OR_DEPLOY))]
RunsReader = ReaderOrDeployer
RunsWriter = Annotated[ApiKey, Depends(require(Scope.projects_write, Scope.migrations_write))]
