"""Keyset cursors over (created_at, id), newest first."""

import base64
import uuid
from datetime import datetime

from hatchery.errors import FieldError, InvalidInput

Position = tuple[datetime, uuid.UUID]


def encode(created_at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode(cursor: str) -> Position:
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(
            "Malformed cursor",
            errors=[
                FieldError(field="query.cursor", message="malformed cursor", type="value_error")
            ],
        ) from None
