import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hatchery.db import Base, CreatedAt, UUIDPrimaryKey, str_enum


class Direction(StrEnum):
    upgrade = "upgrade"
    downgrade = "downgrade"
    restore = "restore"


class Outcome(StrEnum):
    succeeded = "succeeded"
    failed = "failed"


class MigrationRecord(UUIDPrimaryKey, CreatedAt, Base):
    """One revision applied (or reverted, or failed) on one environment's database."""

    __tablename__ = "migration_record"
    __table_args__ = (Index("ix_migration_record_env_created", "environment_id", "created_at"),)

    environment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("environment.id", ondelete="CASCADE")
    )
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("run.id", ondelete="SET NULL"))
    deployment_id: Mapped[str | None] = mapped_column(String(200))
    key_id: Mapped[uuid.UUID | None]
    revision: Mapped[str] = mapped_column(String(64))
    direction: Mapped[Direction] = mapped_column(str_enum(Direction))
    outcome: Mapped[Outcome] = mapped_column(str_enum(Outcome))
    # Normalized sha256 of the revision file as applied: a later change to it is caught.
    sha256: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    duration_ms: Mapped[int]
    error: Mapped[str | None] = mapped_column(Text)
    failing_statement: Mapped[str | None] = mapped_column(Text)


class Backup(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "backup"
    __table_args__ = (Index("ix_backup_env_created", "environment_id", "created_at"),)

    environment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("environment.id", ondelete="CASCADE")
    )
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("run.id", ondelete="SET NULL"))
    revision: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
