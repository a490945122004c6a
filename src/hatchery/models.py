"""Every table of the control database, so that Alembic and tests see the whole metadata."""

from hatchery.audit.models import AuditEvent
from hatchery.db import Base
from hatchery.keys.models import ApiKey
from hatchery.migrations.models import Backup, MigrationRecord
from hatchery.projects.models import Environment, Project
from hatchery.runs.models import Run, Step

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Backup",
    "Base",
    "Environment",
    "MigrationRecord",
    "Project",
    "Run",
    "Step",
]
