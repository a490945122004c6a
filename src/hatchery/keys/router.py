import uuid

from fastapi import APIRouter, Response, status

from hatchery.db import SessionDep
from hatchery.deps import CachesDep, RedisDep, SettingsDep
from hatchery.errors import error_responses
from hatchery.keys import service
from hatchery.keys.auth import AdminKey
from hatchery.keys.schemas import Key, KeyCreate, KeyCreated, KeyList

router = APIRouter(prefix="/keys", tags=["keys"], responses=error_responses(401, 403))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    name="create_key",
    summary="Create an API key",
    responses=error_responses(422),
)
async def create_key(
    body: KeyCreate, settings: SettingsDep, session: SessionDep, admin: AdminKey
) -> KeyCreated:
    """Create a key with the given scopes, optionally bound to one project. The response
    holds the token: it is shown this once and cannot be read again."""
    key, token = await service.create_key(
        session,
        settings.key_hash_key,
        name=body.name,
        scopes=body.scopes,
        project_id=body.project_id,
        created_by=admin.id,
    )
    return KeyCreated(**Key.model_validate(key).model_dump(), token=token)


@router.get("", response_model=KeyList, name="list_keys", summary="List API keys")
async def list_keys(session: SessionDep, _: AdminKey) -> KeyList:
    """Every key, revoked ones included, oldest first. Tokens are never shown."""
    keys = await service.list_keys(session)
    return KeyList(items=[Key.model_validate(k) for k in keys])


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    name="revoke_key",
    summary="Revoke an API key",
    responses=error_responses(404, 422),
)
async def revoke_key(
    key_id: uuid.UUID,
    session: SessionDep,
    redis: RedisDep,
    caches: CachesDep,
    admin: AdminKey,
) -> Response:
    """Revoke a key at once, in every api process; revoking it again is harmless."""
    await service.revoke_key(session, redis, key_id, by=admin.id, here=caches)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
