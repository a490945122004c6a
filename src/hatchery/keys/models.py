import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from hatchery.db import Base, CreatedAt, UUIDPrimaryKey


class Scope(StrEnum):
    admin = "admin"
    projects_read = "projects:read"
    projects_write = "projects:write"
    migrations_write = "migrations:write"
    schema_read = "schema:read"
    deploy = "deploy"


class ApiKey(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "api_key"

    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("project.id"), index=True)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    def allows(self, scope: Scope) -> bool:
        return Scope.admin in self.scopes or scope in self.scopes

    def allows_project(self, project_id: uuid.UUID) -> bool:
        return self.project_id is None or self.project_id == project_id
