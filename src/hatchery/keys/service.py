import uuid
from collections.abc import Sequence

from redis.asyncio import Redis
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import invalidation
from hatchery.audit import service as audit
from hatchery.db import after_commit, utcnow
from hatchery.errors import FieldError, InvalidInput, NotFound, Unauthorized
from hatchery.keys import repository, tokens
from hatchery.keys.models import ApiKey, Scope


async def create_key(
    session: AsyncSession,
    hash_key: bytes,
    *,
    name: str,
    scopes: Sequence[Scope],
    project_id: uuid.UUID | None = None,
    created_by: uuid.UUID | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext token, which is never stored."""
    token = tokens.generate()
    key = ApiKey(
        name=name,
        prefix=token.prefix,
        token_hash=tokens.digest(token, hash_key),
        scopes=[str(s) for s in scopes],
        project_id=project_id,
    )
    try:
        async with session.begin_nested():
            session.add(key)
            await session.flush()
    except IntegrityError:
        raise InvalidInput(
            f"No project with id {project_id}",
            errors=[FieldError(field="body.project_id", message="unknown project", type="unknown")],
        ) from None
    await session.refresh(key)
    await audit.record(
        session,
        "key.created",
        key_id=created_by,
        project_id=project_id,
        detail={"created_key_id": str(key.id), "scopes": key.scopes},
    )
    return key, token.plaintext


async def list_keys(session: AsyncSession) -> Sequence[ApiKey]:
    return await repository.list_all(session)


async def revoke_key(
    session: AsyncSession,
    redis: Redis,
    key_id: uuid.UUID,
    *,
    by: uuid.UUID | None,
    here: invalidation.Caches | None = None,
) -> ApiKey:
    """Revoke a key; once committed, every api process drops the keys it remembers."""
    key = await repository.get(session, key_id)
    if key is None:
        raise NotFound(f"No key with id {key_id}")
    if key.revoked_at is None:
        key.revoked_at = func.now()
        await session.flush()
        await session.refresh(key)
        await audit.record(
            session, "key.revoked", key_id=by, detail={"revoked_key_id": str(key_id)}
        )
        after_commit(session, lambda: invalidation.announce(redis, invalidation.KEYS, here))
    return key


async def active_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey:
    """A key found by id (a stream ticket's), refused like a token once revoked."""
    key = await repository.get(session, key_id)
    if key is None or key.revoked_at is not None:
        raise Unauthorized("The key behind this ticket is unknown or revoked")
    return key


async def authenticate(
    session: AsyncSession, hash_key: bytes, plaintext: str, known: invalidation.Caches
) -> ApiKey:
    """The key of a bearer token. A key seen lately is remembered by its token's digest
    (a revocation makes every api process forget), so most requests skip the lookup."""
    token = tokens.parse(plaintext)
    if token is None:
        raise Unauthorized("Malformed bearer token")
    digest = tokens.digest(token, hash_key)
    remembered: ApiKey | None = known.named(invalidation.KEYS).get(digest)
    if remembered is not None:
        return remembered
    key = await repository.get_by_prefix(session, token.prefix)
    if key is None or not tokens.matches(token, key.token_hash, hash_key):
        raise Unauthorized("Unknown bearer token")
    if key.revoked_at is not None:
        raise Unauthorized("This token has been revoked")
    if key.last_used_at is None or key.last_used_at < utcnow() - repository.LAST_USED_RESOLUTION:
        await repository.touch(session, key)
    detached = ApiKey(
        id=key.id, name=key.name, prefix=key.prefix, token_hash=key.token_hash,
        scopes=list(key.scopes), project_id=key.project_id, created_at=key.created_at,
        last_used_at=key.last_used_at,
    )  # fmt: skip
    known.named(invalidation.KEYS)[digest] = detached
    return detached
