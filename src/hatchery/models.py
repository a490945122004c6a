"""Every table of the control database, so that Alembic and tests see the whole metadata."""

from hatchery.audit.models import AuditEvent
from hatchery.db import Base
from hatchery.keys.models import ApiKey

__all__ = ["ApiKey", "AuditEvent", "Base"]
