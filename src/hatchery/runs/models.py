import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hatchery.db import Base, CreatedAt, UUIDPrimaryKey, str_enum


class RunKind(StrEnum):
    initialize = "initialize"
    upgrade = "upgrade"
    downgrade = "downgrade"
    restore = "restore"
    refresh = "refresh"
    delete = "delete"


class RunStatus(StrEnum):
    scheduled = "scheduled"  # waits for `not_before` (a deploy window), then is queued
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


class RunTrigger(StrEnum):
    api = "api"
    deployment = "deployment"
    retry = "retry"
    schedule = "schedule"


class StepStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"


class Run(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "run"
    __table_args__ = (
        Index(
            "uq_run_project_idempotency_key",
            "project_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_run_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_run_project_created", "project_id", "created_at"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    kind: Mapped[RunKind] = mapped_column(str_enum(RunKind))
    status: Mapped[RunStatus] = mapped_column(str_enum(RunStatus), default=RunStatus.queued)
    trigger: Mapped[RunTrigger] = mapped_column(str_enum(RunTrigger), default=RunTrigger.api)
    # The client's key (at most 200 characters) behind a scope such as `deployment:`.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    attempt: Mapped[int] = mapped_column(default=1)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    key_id: Mapped[uuid.UUID | None]
    request_id: Mapped[str | None] = mapped_column(String(128))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    heartbeat_at: Mapped[datetime | None]
    # A scheduled run starts no earlier than this.
    not_before: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(50))

    steps: Mapped[list["Step"]] = relationship(
        back_populates="run", lazy="raise", order_by="Step.position"
    )

    def add_result(self, **fields: Any) -> None:
        """Add to what the run reports (a new dict: the JSON column sees the change)."""
        self.result = {**(self.result or {}), **fields}

    @property
    def seconds(self) -> float | None:
        """How long it took, from start (or, never started, from creation) to its end."""
        if self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - (self.started_at or self.created_at)).total_seconds())


class Step(UUIDPrimaryKey, Base):
    __tablename__ = "step"
    __table_args__ = (Index("uq_step_run_name", "run_id", "name", unique=True),)

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(50))
    position: Mapped[int]
    status: Mapped[StepStatus] = mapped_column(str_enum(StepStatus), default=StepStatus.pending)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    error_trace: Mapped[str | None] = mapped_column(Text)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    run: Mapped[Run] = relationship(back_populates="steps", lazy="raise")
