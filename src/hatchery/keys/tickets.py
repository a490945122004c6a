"""Stream tickets: what a browser's EventSource, which cannot send an Authorization
header, puts in the URL instead of an API key. A ticket follows one run, lasts a few
minutes (long enough to reconnect after an api restart), and is kept in Redis only as a
hash; its key is checked again, revocation included, on every connection."""

import hashlib
import secrets
import uuid

from redis.asyncio import Redis

PREFIX = "hatchery:stream-ticket:"


def _slot(ticket: str) -> str:
    return PREFIX + hashlib.sha256(ticket.encode()).hexdigest()


async def issue(redis: Redis, key_id: uuid.UUID, run_id: uuid.UUID, seconds: int) -> str:
    ticket = "hst_" + secrets.token_urlsafe(32)
    await redis.set(_slot(ticket), f"{key_id} {run_id}", ex=seconds)
    return ticket


async def redeem(redis: Redis, ticket: str, run_id: uuid.UUID) -> uuid.UUID | None:
    """The id of the key that took the ticket, if it is for this run and has not expired."""
    found = await redis.get(_slot(ticket))
    if found is None:
        return None
    key_id, ticket_run = found.decode().split()
    return uuid.UUID(key_id) if ticket_run == str(run_id) else None
