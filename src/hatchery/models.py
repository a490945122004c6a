"""Every table of the control database, so that Alembic and tests see the whole metadata."""

from hatchery.audit.models import AuditEvent
from hatchery.db import Base
from hatchery.keys.models import ApiKey
from hatchery.projects.models import Environment, Project
from hatchery.runs.models import Run, Step

__all__ = ["ApiKey", "AuditEvent", "Base", "Environment", "Project", "Run", "Step"]
