"""Who is calling: the bearer token, checked on every route but the public ones."""

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
    if credentials is None:
        raise Unauthorized("Missing bearer token")
    key = await service.authenticate(
        session, request.app.state.settings.key_hash_key, credentials.credentials
    )
    structlog.contextvars.bind_contextvars(key_id=str(key.id))
    return key


CurrentKey = Annotated[ApiKey, Depends(authenticated_key)]


def require(scope: Scope) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    async def check(key: CurrentKey) -> ApiKey:
        if not key.allows(scope):
            raise Forbidden(f"This key lacks the '{scope}' scope")
        return key

    return check


AdminKey = Annotated[ApiKey, Depends(require(Scope.admin))]
