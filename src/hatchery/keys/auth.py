"""Who is calling: the bearer token, checked on every route but the public ones."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hatchery.db import SessionDep
from hatchery.errors import Forbidden, Unauthorized
from hatchery.keys import service
from hatchery.keys.models import ApiKey, Scope

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer hat_...`")


async def authenticated_key(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    state = request.app.state
    limiter = state.rate_limiter
    address = limiter.hit(
        limiter.per_address, "address", request.client.host if request.client else "unknown"
    )
    try:
        if credentials is None:
            raise Unauthorized("Missing bearer token")
        key = await service.authenticate(
            session, state.settings.key_hash_key, credentials.credentials, state.caches
        )
    except Unauthorized:
        await address  # refused requests count too: guessing tokens is limited
        raise
    except BaseException:
        address.close()
        raise
    # Both counts in one round trip's time.
    await asyncio.gather(address, limiter.hit(limiter.per_key, "key", str(key.id)))
    structlog.contextvars.bind_contextvars(key_id=str(key.id))
    return key


CurrentKey = Annotated[ApiKey, Depends(authenticated_key)]


def require(*scopes: Scope) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    """A key with any one of `scopes` (admin has them all)."""

    async def check(key: CurrentKey) -> ApiKey:
        if not any(key.allows(scope) for scope in scopes):
            wanted = "' or '".join(scopes)
            raise Forbidden(f"This key lacks the '{wanted}' scope")
        return key

    return check


def check_project(key: ApiKey, project_id: uuid.UUID) -> None:
    if not key.allows_project(project_id):
        raise Forbidden("This key is bound to another project")


def check_unbound(key: ApiKey) -> None:
    if key.project_id is not None:
        raise Forbidden("A key bound to a project cannot act outside it")


AdminKey = Annotated[ApiKey, Depends(require(Scope.admin))]
ProjectsReader = Annotated[ApiKey, Depends(require(Scope.projects_read))]
ProjectsWriter = Annotated[ApiKey, Depends(require(Scope.projects_write))]
# What CI's deploy token reads besides deploying: its project and its runs.
ReaderOrDeployer = Annotated[ApiKey, Depends(require(Scope.projects_read, Scope.deploy))]
RunsReader = ReaderOrDeployer
RunsWriter = Annotated[ApiKey, Depends(require(Scope.projects_write, Scope.migrations_write))]
