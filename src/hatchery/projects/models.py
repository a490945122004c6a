import uuid
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hatchery.db import Base, CreatedAt, UUIDPrimaryKey, str_enum


class ProjectStatus(StrEnum):
    pending = "pending"
    initializing = "initializing"
    active = "active"
    failed = "failed"
    deleting = "deleting"
    deleted = "deleted"


class Project(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "project"
    __table_args__ = (
        # A deleted project gives its slug back.
        Index(
            "uq_project_slug_live",
            "slug",
            unique=True,
            postgresql_where=text("status <> 'deleted'"),
        ),
    )

    slug: Mapped[str] = mapped_column(String(30))
    name: Mapped[str] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[ProjectStatus] = mapped_column(
        str_enum(ProjectStatus), default=ProjectStatus.pending
    )
    # Shown to clients: the clone URL, without credentials.
    repository_url: Mapped[str] = mapped_column(Text)
    # The bare repository Hatchery reads migrations from: the project's own, or for an
    # adopted project a mirror fetched from `origin_url` (encrypted: it may hold
    # credentials).
    repository_path: Mapped[str] = mapped_column(Text)
    origin_url: Mapped[bytes | None]
    branch: Mapped[str | None] = mapped_column(String(200))
    alembic_ini: Mapped[str | None] = mapped_column(Text)
    # How its migrations run (projects.schemas.MigrationSettings); defaults when None.
    migration_settings: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    initialization_summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    initialization_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    def environment(self, name: str) -> "Environment | None":
        return next((e for e in self.environments if e.name == name), None)

    @property
    def repository(self) -> Path:
        """The bare repository (or an adopted project's mirror) on this machine."""
        return Path(self.repository_path)

    @property
    def adopted(self) -> bool:
        return self.origin_url is not None

    environments: Mapped[list["Environment"]] = relationship(
        back_populates="project", lazy="raise", order_by="Environment.position"
    )


class Environment(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "environment"
    __table_args__ = (
        Index("uq_environment_project_name", "project_id", "name", unique=True),
        # Workers look for due refresh schedules every few seconds.
        Index(
            "ix_environment_refresh_next_at",
            "refresh_next_at",
            postgresql_where=text("refresh_next_at IS NOT NULL"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(20))
    position: Mapped[int]
    database_name: Mapped[str] = mapped_column(String(63))
    role_name: Mapped[str] = mapped_column(String(63))
    # The full connection URL, encrypted with the settings' encryption key; it never
    # leaves the server.
    database_url: Mapped[bytes | None]
    revision: Mapped[str | None] = mapped_column(String(64))
    # The commit of the last deployment: its migrations are the environment's history.
    deployed_commit: Mapped[str | None] = mapped_column(String(64))
    # Where the project keeps its revision (`schema.table`), as its env.py configures it.
    version_table: Mapped[str | None] = mapped_column(String(130))
    # Masking rules for refreshes into this environment (environments.schemas.MaskingRule).
    masking_rules: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # When deploys may migrate it (`migrations.windows` specs); at any time when None.
    deploy_windows: Mapped[list[str] | None] = mapped_column(JSONB)
    # A refresh on a schedule (environments.schemas.RefreshSchedule), and its next tick.
    refresh_schedule: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    refresh_next_at: Mapped[datetime | None]

    project: Mapped[Project] = relationship(back_populates="environments", lazy="raise")
