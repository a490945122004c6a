import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.audit.models import AuditEvent
from hatchery.observability import current_request_id


async def record(
    session: AsyncSession,
    action: str,
    *,
    key_id: uuid.UUID | None,
    project_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        action=action,
        key_id=key_id,
        project_id=project_id,
        request_id=current_request_id(),
        detail=detail or {},
    )
    session.add(event)
    await session.flush()
    return event
