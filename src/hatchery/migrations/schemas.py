import uuid
from datetime import datetime
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from hatchery.migrations import windows
from hatchery.projects.schemas import RevisionId
from hatchery.text import VisibleText

CommitSha = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-fA-F]{4,64}$"),
    Field(description="A commit of the project's repository (full or abbreviated)."),
]


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: Annotated[str, StringConstraints(min_length=1, max_length=20)]
    commit_sha: CommitSha
    deployment_id: Annotated[
        VisibleText,
        StringConstraints(min_length=1, max_length=200),
        Field(description="CI's id for the deployment: sending it again returns the same run."),
    ]
    target_revision: RevisionId | None = Field(
        default=None, description="Defaults to the head of the migrations at `commit_sha`."
    )
    force: bool = Field(
        default=False,
        description="Skip promotion gating and deploy windows (admin keys only; audited).",
    )
    not_before: AwareDatetime | None = Field(
        default=None,
        description="Migrate no earlier than this (and then in the environment's next deploy "
        "window, if it has windows); the run waits `scheduled` until then.",
    )


class MigrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: RevisionId = "head"
    dry_run: bool = Field(default=False, description="Return the SQL and change nothing.")
    commit_sha: CommitSha | None = Field(
        default=None, description="Defaults to the environment's last deployed commit."
    )
    force: bool = False


class Unrendered(BaseModel):
    revision: str
    error: str = Field(description="Why it has no offline SQL (it needs a live connection).")


class DryRun(BaseModel):
    commit: str
    current: str | None
    target: str
    pending: list[str]
    sql: str = Field(
        description="The offline SQL of the pending revisions, as `alembic upgrade --sql` "
        "prints it from the project's own env.py."
    )
    unrendered: list[Unrendered] = Field(
        description="Revisions that cannot be rendered offline; the others still are."
    )
    not_all_or_nothing: list[str] = Field(
        description="Pending revisions that commit part of themselves (`autocommit_block`): "
        "the run then commits revision by revision, and a failure leaves the database at "
        "the last one that landed."
    )


class RollbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_revision: RevisionId | None = Field(
        default=None, description="Downgrade to this earlier revision (`base` for none)."
    )
    backup_id: uuid.UUID | None = Field(default=None, description="Restore this backup.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "RollbackCreate":
        if (self.target_revision is None) == (self.backup_id is None):
            raise ValueError("give exactly one of target_revision and backup_id")
        return self


class AppliedInfo(BaseModel):
    at: datetime
    by_key_id: uuid.UUID | None
    run_id: uuid.UUID | None
    deployment_id: str | None
    duration_ms: int


class RevisionOut(BaseModel):
    revision: str
    down_revisions: list[str]
    message: str
    applied: AppliedInfo | None = Field(description="When and by whom it landed here, if it has.")


class Revisions(BaseModel):
    environment: str
    commit: str | None = Field(description="The commit whose migrations are listed.")
    current: str | None
    head: str | None
    pending: list[str]
    history: list[RevisionOut] = Field(description="Oldest first.")


class BackupOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    revision: str | None
    size_bytes: int
    sha256: str
    run_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None


class BackupList(BaseModel):
    items: list[BackupOut] = Field(description="Newest first.")


WindowSpec = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    Field(
        description="`<days> HH:MM-HH:MM <IANA time zone>`: days are `daily`, a day (`Sat`), "
        "a range (`Mon-Fri`) or a list (`Sat,Sun`); seconds may be given (`HH:MM:SS`); a "
        "window that ends at or before its start closes the next day.",
        examples=["Sat 02:00-04:00 Europe/Berlin"],
    ),
]


class WindowsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    windows: list[WindowSpec] = Field(
        max_length=50, description="Deploys migrate only inside these; none: at any time."
    )

    @field_validator("windows")
    @classmethod
    def _parse(cls, specs: list[str]) -> list[str]:
        return [windows.parse(spec).spec for spec in specs]  # InvalidWindow is a ValueError


class WindowOut(BaseModel):
    spec: str
    days: list[str]
    start: str
    end: str
    timezone: str


class Windows(BaseModel):
    environment: str
    windows: list[WindowOut]
    open_now: bool = Field(description="Whether a deploy now would migrate at once.")
    next_open: datetime | None = Field(
        description="When the current (or next) window opens; none without windows."
    )
    closes_at: datetime | None = Field(description="When that window closes.")
